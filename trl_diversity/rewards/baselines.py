"""Advantages of a group reward used as the diversity term: `r_i - b_i`, with a baseline `b_i` per sample.

- Pairwise measures (`r_i = mean_{j != i} s(y_i, y_j)` for a symmetric `s` with `s(y, y) = 0`: the built-ins, and
  any group reward with a true `pairwise` attribute): the exact leave-one-out baseline, the mean of `s` over the pairs
  among the other `k - 1` samples. It does not depend on `y_i`, so the REINFORCE estimate stays unbiased
  (`leave_one_out_baselines` in `diversity.py`).
- Any other group reward: RLOO, the mean of the other `k - 1` rewards. When `r_j` itself depends on `y_i` (it does
  for a group reward) this baseline is not exactly independent of `y_i`; it is the usual low-variance choice.

Neither is divided by a standard deviation: `diversity_coef * (r_i - b_i)` keeps `diversity_coef` a real weight.
"""

from __future__ import annotations

import torch

from trl_diversity.rewards.diversity import diversity_advantages


def rloo_baselines(rewards: torch.Tensor, num_generations: int) -> torch.Tensor:
    """The mean of the other `k - 1` rewards of each sample's group (rows grouped by `num_generations`)."""
    if num_generations < 2:
        raise ValueError(f"A leave-one-out baseline needs at least 2 samples per prompt, got {num_generations}.")
    grouped = rewards.view(-1, num_generations)
    return ((grouped.sum(-1, keepdim=True) - grouped) / (num_generations - 1)).reshape(-1)


def is_pairwise(reward) -> bool:
    """Whether a group reward declares itself a mean of symmetric pairwise terms (`pairwise = True`)."""
    return bool(getattr(reward, "pairwise", False))


def group_advantages(rewards: torch.Tensor, num_generations: int, pairwise: bool) -> torch.Tensor:
    """`r_i - b_i`: exact leave-one-out baseline for pairwise measures, RLOO otherwise."""
    if pairwise:
        return diversity_advantages(rewards, num_generations)
    return rewards - rloo_baselines(rewards, num_generations)
