"""Reduce a per-token loss to a scalar exactly the way GRPO (or RLOO) reduces its policy-gradient term.

The distillation term is added to GRPO's loss, so it must be averaged over tokens and sequences, and scaled for
gradient accumulation, by the same rule as the policy term of the chosen `loss_type`; otherwise the relative weight
of `distill_coef` would silently change with the loss type, the completion lengths or the accumulation steps.
"""

from __future__ import annotations

import torch

# Every loss type of TRL's GRPO that `reduce_like_grpo` mirrors; a contract test fails when GRPO lists another.
GRPO_LOSS_TYPES = ("grpo", "sapo", "bnpo", "dr_grpo", "cispo", "dapo", "vespo", "luspo")


def reduce_like_grpo(
    per_token: torch.Tensor,
    mask: torch.Tensor,
    loss_type: str,
    *,
    accumulation_steps: int,
    max_completion_length: int,
    num_items_in_batch: torch.Tensor | None,
    num_processes: int,
    steps_per_generation: int,
    training: bool,
) -> torch.Tensor:
    """Mirror of the per-loss-type reduction at the end of `trl.GRPOTrainer._compute_loss` (TRL 1.16)."""
    mask = mask.to(per_token.dtype)
    # GRPO divides by the accumulation steps itself (HF's automatic scaling is off for it); no accumulation in eval.
    accumulation = accumulation_steps if training else 1
    if loss_type in ("grpo", "sapo"):
        return ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean() / accumulation
    if loss_type == "bnpo":
        return (per_token * mask).sum() / mask.sum().clamp(min=1.0) / accumulation
    if loss_type == "dr_grpo":
        return (per_token * mask).sum() / (per_token.size(0) * max_completion_length) / accumulation
    if loss_type in ("cispo", "dapo", "vespo"):
        # `num_items_in_batch` counts the completion tokens of the whole generation batch on all processes.
        normalizer = num_items_in_batch.clamp(min=1.0) / num_processes
        if training:
            normalizer = normalizer * accumulation_steps / steps_per_generation
        return (per_token * mask).sum() / normalizer
    if loss_type == "luspo":
        return (per_token * mask).sum(-1).mean() / accumulation
    raise ValueError(f"Unknown loss type {loss_type!r}.")


def reduce_like_rloo(per_token: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mirror of the reduction at the end of `trl.RLOOTrainer._compute_loss` (TRL 1.16).

    RLOO's policy term is a sequence-level ratio times the advantage, i.e. a sum over each completion's tokens, then
    `per_sequence_loss.mean()` over the micro-batch's completions. RLOO leaves gradient accumulation to transformers
    (`loss_is_scaled_for_ga=False`: the returned loss is divided by the accumulation steps there), so nothing is
    divided here, in training or evaluation.
    """
    return (per_token * mask.to(per_token.dtype)).sum(-1).mean()
