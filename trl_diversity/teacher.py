"""The CFG teacher: the frozen starting point, run on the conditional and unconditional contexts at once.

For each completion it returns the teacher's guided hidden states at the completion positions,
`h_u + gamma * (h_c - h_u)`; projected by the teacher's LM head they give the CFG logits `l_u + gamma * (l_c - l_u)`
(the head is linear), so neither branch's `(batch, length, vocab)` logits are ever built.
"""

from __future__ import annotations

import torch

from .guidance import guide
from .hidden_states import capture_last_hidden_state


def left_pad(rows: torch.Tensor, mask: torch.Tensor, width: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad `[B, L]` ids and attention mask to `[B, width]`."""
    extra = width - rows.shape[1]
    if extra <= 0:
        return rows, mask
    return (
        torch.nn.functional.pad(rows, (extra, 0), value=pad_id),
        torch.nn.functional.pad(mask, (extra, 0), value=0),
    )


def cfg_inputs(
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    unconditional_ids: list[int],
    pad_id: int,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Stack `[conditional; unconditional]` sequences that share the completions: `[2B, W + C]` ids and mask.

    Both contexts are left-padded to a common width `W` (returned), so position `W - 1 + t` predicts completion
    token `t` in every row.
    """
    batch = prompt_ids.shape[0]
    uncond = torch.tensor(unconditional_ids, dtype=prompt_ids.dtype, device=prompt_ids.device).expand(batch, -1)
    width = max(prompt_ids.shape[1], uncond.shape[1])
    cond_ids, cond_mask = left_pad(prompt_ids, prompt_mask, width, pad_id)
    uncond_ids, uncond_mask = left_pad(uncond, torch.ones_like(uncond, dtype=prompt_mask.dtype), width, pad_id)
    ids = torch.cat([torch.cat([cond_ids, uncond_ids]), completion_ids.repeat(2, 1)], dim=1)
    mask = torch.cat([torch.cat([cond_mask, uncond_mask]), completion_mask.repeat(2, 1)], dim=1)
    return ids, mask, width


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
    a hook, and `logits_to_keep=1` keeps the head's own projection to a single position. Rows are processed
    `batch_size` prompts at a time, each chunk as one forward over its conditional and unconditional rows.
    """
    batch, length = completion_ids.shape
    batch_size = batch_size or batch
    chunks = []
    for start in range(0, batch, batch_size):
        rows = slice(start, min(start + batch_size, batch))
        ids, mask, width = cfg_inputs(
            prompt_ids[rows], prompt_mask[rows], completion_ids[rows], completion_mask[rows], unconditional_ids, pad_id
        )
        with capture_last_hidden_state(_unwrap(teacher)) as captured:
            teacher(input_ids=ids, attention_mask=mask, logits_to_keep=1, use_cache=False)
        hidden = captured[-1][:, width - 1 : width - 1 + length].float()
        conditional, unconditional = hidden.chunk(2)
        chunks.append(guide(conditional, unconditional, guidance_scale))
    return torch.cat(chunks)


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    # DDP and DeepSpeed engines keep the real model in `.module`.
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    return model
