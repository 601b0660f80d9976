"""The guided teacher: the frozen starting point, run on the conditional context and the negative contexts of each
completion.

For each completion it returns the teacher's guided hidden states at the completion positions: for plain CFG
`h_u + gamma * (h_c - h_u)`, in general `h_c + sum_j w_j (h_c - h_j)` (`trl_diversity/guidance/`). Projected by the
teacher's LM head they give the guided logits (the head is affine and the weights sum to 1), so no branch's
`(batch, length, vocab)` logits are ever built.

The contexts are shared: a prompt's `k` completions have one conditional context (and one context per per-prompt
negative), and every completion has the same null context. So the teacher first encodes each distinct context once
(a key-value cache), then runs every branch's rows of all completions as one batched forward over the completion
tokens only. With `k = 4` this halves the teacher's work against encoding every `context + completion` row in full.
An early-layer negative costs no forward of its own: it is the conditional rows' output after that layer, read
through the final norm.

Positions are given explicitly, counted from each row's first real token: contexts are left-padded to one width, and
a model with absolute position embeddings (GPT-2, OPT) would otherwise see a short prompt, or the null context, at
the positions of the padding. (Rotary models are unaffected: only position differences matter to them.)
"""

from __future__ import annotations

import copy

import torch

from trl_diversity.guidance import GuidanceSpec, combine, plain_cfg, unguided_before
from trl_diversity.guidance.readout import capture_layer_outputs, read_out
from trl_diversity.trainer.hidden_states import cache_argument_name, capture_last_hidden_state


def shared_contexts(
    branches: list[list[list[int]]], pad_id: int, device, dtype=torch.long
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The distinct contexts of every branch, left-padded to one width, and which context each row of each branch uses.

    `branches[j][b]` holds the context ids of row `b` in branch `j` (branch 0 is the conditional one). Returns
    `ids [U, W]`, `mask [U, W]` and `rows [J * B]` (branch-major: rows `j*B .. j*B+B-1` are branch `j`'s). A context
    shared by rows or branches (a prompt's `k` completions, the null context of every row) is encoded once.
    """
    index: dict[tuple[int, ...], int] = {}
    rows = []
    for branch in branches:
        for ids in branch:
            rows.append(index.setdefault(tuple(ids), len(index)))
    contexts = list(index)
    width = max(len(context) for context in contexts)
    ids = torch.tensor([[pad_id] * (width - len(c)) + list(c) for c in contexts], dtype=dtype, device=device)
    mask = torch.tensor([[0] * (width - len(c)) + [1] * len(c) for c in contexts], dtype=torch.long, device=device)
    return ids, mask, torch.tensor(rows, device=device)


def prompt_rows(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> list[list[int]]:
    """Each row's prompt ids without its left padding."""
    return [row[mask.bool()].tolist() for row, mask in zip(prompt_ids, prompt_mask)]


@torch.no_grad()
def guided_teacher_hidden_states(
    teacher: torch.nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    unconditional_ids: list[int],
    guidance_scale: float,
    pad_id: int,
    batch_size: int | None = None,
) -> torch.Tensor:
    """Plain CFG's guided hidden states `h_u + gamma (h_c - h_u)` (`[B, C, H]`, float32): one null negative of weight
    `gamma - 1` (see `guided_hidden_states`)."""
    return guided_hidden_states(
        teacher,
        prompt_ids,
        prompt_mask,
        completion_ids,
        completion_mask,
        plain_cfg(guidance_scale),
        [[list(unconditional_ids)] * len(prompt_ids)],
        pad_id,
        batch_size,
    )


@torch.no_grad()
def guided_hidden_states(
    teacher: torch.nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    spec: GuidanceSpec,
    negative_ids: list[list[list[int]]],
    pad_id: int,
    batch_size: int | None = None,
) -> torch.Tensor:
    """Guided teacher hidden states `[B, C, H]` (float32) at the completion positions, for any guidance `spec`.

    `negative_ids[j][b]` is the context of row `b` for the `j`-th of `spec.context_negatives`. `teacher` is called as
    a causal LM (it may be wrapped by DDP/DeepSpeed/FSDP); its backbone output (and, for early-layer negatives, the
    output of those layers) is captured by hooks, and `logits_to_keep=1` keeps the head's own projection to a single
    position. The completion pass runs `batch_size` completions at a time, each chunk as one forward over its rows in
    every context branch.
    """
    batch, length = completion_ids.shape
    negatives = spec.context_negatives
    if len(negative_ids) != len(negatives):
        raise ValueError(f"{len(negative_ids)} negative contexts given for the {len(negatives)} of {spec}")
    branches = [prompt_rows(prompt_ids, prompt_mask), *negative_ids]
    contexts, context_mask, rows = shared_contexts(branches, pad_id, prompt_ids.device, prompt_ids.dtype)
    num_branches = len(branches)
    module = _unwrap(teacher)
    layers = [negative.layer for negative in spec.layer_negatives]
    cache_argument = cache_argument_name(module)
    context_positions = (context_mask.long().cumsum(-1) - 1).clamp(min=0)
    context_lengths = context_mask.long().sum(-1)
    with capture_last_hidden_state(module) as captured, capture_layer_outputs(module, layers) as (early, _):
        prefix = teacher(
            input_ids=contexts,
            attention_mask=context_mask,
            position_ids=context_positions,
            logits_to_keep=1,
            use_cache=True,
        )
    prefix_cache = prefix.cache if cache_argument == "cache" else prefix.past_key_values
    # The last context position predicts the first completion token (contexts are left-padded).
    first = captured[-1][:, -1]
    first_early = {layer: early[layer][-1][:, -1] for layer in layers}

    batch_size = batch_size or batch
    chunks = []
    for start in range(0, batch, batch_size):
        chunk = torch.arange(start, min(start + batch_size, batch), device=rows.device)
        # the chunk's rows in each branch, branch by branch: conditional first
        chunk_rows = torch.cat([chunk + branch * batch for branch in range(num_branches)])
        context_of = rows[chunk_rows]
        cache = copy.deepcopy(prefix_cache)
        cache.reorder_cache(context_of)  # one copy of its context's keys and values per row
        ids = completion_ids[chunk].repeat(num_branches, 1)
        mask = torch.cat([context_mask[context_of], completion_mask[chunk].repeat(num_branches, 1)], dim=1)
        # Completions are right-padded: token t of a completion sits right after its context's last real token.
        positions = context_lengths[context_of].unsqueeze(1) + torch.arange(length, device=ids.device)
        with capture_last_hidden_state(module) as captured, capture_layer_outputs(module, layers) as (early, _):
            teacher(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                logits_to_keep=1,
                use_cache=True,
                **{cache_argument: cache},
            )
        # Completion position t predicts token t + 1; the first token comes from the context's last position.
        hidden = torch.cat([first[context_of].unsqueeze(1), captured[-1][:, : length - 1]], dim=1).float()
        conditional, *context_branches = hidden.chunk(num_branches)
        conditional_contexts = context_of[: len(chunk)]
        layer_branches = [
            read_out(
                module,
                torch.cat(
                    [
                        first_early[layer][conditional_contexts].unsqueeze(1),
                        early[layer][-1][: len(chunk), : length - 1],
                    ],
                    dim=1,
                ),
            ).float()
            for layer in layers
        ]
        weights = [n.weight for n in negatives] + [n.weight for n in spec.layer_negatives]
        guided = combine(conditional, [*context_branches, *layer_branches], weights)
        chunks.append(unguided_before(guided, conditional, spec.start))
    return torch.cat(chunks)


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    # DDP and DeepSpeed engines keep the real model in `.module`.
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    return model
