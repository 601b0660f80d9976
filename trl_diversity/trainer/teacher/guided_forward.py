"""The CFG teacher: the frozen starting point, run on the conditional and unconditional contexts of each completion.

For each completion it returns the teacher's guided hidden states at the completion positions,
`h_u + gamma * (h_c - h_u)`; projected by the teacher's LM head they give the CFG logits `l_u + gamma * (l_c - l_u)`
(the head is linear), so neither branch's `(batch, length, vocab)` logits are ever built.

The contexts are shared: a prompt's `k` completions have one conditional context, and every completion has the same
unconditional one. So the teacher first encodes each distinct context once (a key-value cache), then runs the
conditional and unconditional rows of all completions as one batched forward over the completion tokens only. With
`k = 4` this halves the teacher's work against encoding every `context + completion` row in full.

Positions are given explicitly, counted from each row's first real token: contexts are left-padded to one width, and
a model with absolute position embeddings (GPT-2, OPT) would otherwise see a short prompt, or the null context, at
the positions of the padding. (Rotary models are unaffected: only position differences matter to them.)
"""

from __future__ import annotations

import copy
import inspect

import torch

from trl_diversity.trainer.guidance import guide
from trl_diversity.trainer.hidden_states import capture_last_hidden_state, language_model


def left_pad(rows: torch.Tensor, mask: torch.Tensor, width: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad `[B, L]` ids and attention mask to `[B, width]`."""
    extra = width - rows.shape[1]
    if extra <= 0:
        return rows, mask
    return (
        torch.nn.functional.pad(rows, (extra, 0), value=pad_id),
        torch.nn.functional.pad(mask, (extra, 0), value=0),
    )


def shared_contexts(
    prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, unconditional_ids: list[int], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The distinct contexts, left-padded to one width, and which context each of the `2B` rows uses.

    Returns `ids [U + 1, W]`, `mask [U + 1, W]` (the `U` distinct prompts, then the null prompt) and `rows [2B]`:
    rows `0..B-1` are the conditional rows, `B..2B-1` the unconditional ones (all pointing at context `U`).
    """
    prompts = prompt_ids.masked_fill(prompt_mask == 0, pad_id)
    unique, conditional_rows = torch.unique(prompts, dim=0, return_inverse=True)
    unique_mask = torch.stack([prompt_mask[conditional_rows.tolist().index(i)] for i in range(len(unique))])
    null = torch.tensor([unconditional_ids], dtype=prompt_ids.dtype, device=prompt_ids.device)
    width = max(unique.shape[1], null.shape[1])
    unique, unique_mask = left_pad(unique, unique_mask, width, pad_id)
    null, null_mask = left_pad(null, torch.ones_like(null, dtype=prompt_mask.dtype), width, pad_id)
    rows = torch.cat([conditional_rows, torch.full_like(conditional_rows, len(unique))])
    return torch.cat([unique, null]), torch.cat([unique_mask, null_mask]), rows


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
    """Guided teacher hidden states `[B, C, H]` (float32) at the completion positions.

    `teacher` is called as a causal LM (it may be wrapped by DDP/DeepSpeed/FSDP); its backbone output is captured by
    a hook, and `logits_to_keep=1` keeps the head's own projection to a single position. The completion pass runs
    `batch_size` completions at a time, each chunk as one forward over its conditional and unconditional rows.
    """
    batch, length = completion_ids.shape
    contexts, context_mask, rows = shared_contexts(prompt_ids, prompt_mask, unconditional_ids, pad_id)
    module = _unwrap(teacher)
    cache_argument = _cache_argument_name(module)
    context_positions = (context_mask.long().cumsum(-1) - 1).clamp(min=0)
    context_lengths = context_mask.long().sum(-1)
    with capture_last_hidden_state(module) as captured:
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

    batch_size = batch_size or batch
    chunks = []
    for start in range(0, batch, batch_size):
        chunk = torch.arange(start, min(start + batch_size, batch), device=rows.device)
        chunk_rows = torch.cat([chunk, chunk + batch])  # its conditional rows, then its unconditional rows
        context_of = rows[chunk_rows]
        cache = copy.deepcopy(prefix_cache)
        cache.reorder_cache(context_of)  # one copy of its context's keys and values per row
        ids = completion_ids[chunk].repeat(2, 1)
        mask = torch.cat([context_mask[context_of], completion_mask[chunk].repeat(2, 1)], dim=1)
        # Completions are right-padded: token t of a completion sits right after its context's last real token.
        positions = context_lengths[context_of].unsqueeze(1) + torch.arange(length, device=ids.device)
        with capture_last_hidden_state(module) as captured:
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
        conditional, unconditional = hidden.chunk(2)
        chunks.append(guide(conditional, unconditional, guidance_scale))
    return torch.cat(chunks)


def _cache_argument_name(model: torch.nn.Module) -> str:
    """transformers renamed `past_key_values` to `cache` in the 5.x series; use whichever this model takes."""
    parameters = inspect.signature(type(language_model(model)).forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    # DDP and DeepSpeed engines keep the real model in `.module`.
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    return model
