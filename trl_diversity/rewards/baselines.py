"""The baselines of the diversity term, and its advantage `r_i - b_i`, with one baseline `b_i` per sample.

Two baselines, for two kinds of group reward (rows `g * k .. g * k + k - 1` belong to prompt `g`):

- `pairs_among_others_baselines`, for pairwise measures (`r_i = mean_{j != i} s(y_i, y_j)` for a symmetric `s` with
  `s(y, y) = 0`: the built-ins, and any group reward with a true `pairwise` attribute): the mean of `s` over the pairs
  among the other `k - 1` samples. It does not depend on `y_i`, so the REINFORCE estimate stays unbiased. Summing
  pairs shows `b_i = (sum_j r_j - 2 r_i) / (k - 2)`, hence `r_i - b_i = k / (k - 2) * (r_i - mean_j r_j)`.
  With `k = 2` there is no pair among the others: both samples get the same reward `s(1, 2)`, and a zero baseline
  would make every advantage non-negative (pushing up every pair, only some more than others). The baseline is then
  the mean reward of the batch's *other* groups, which does not depend on the sample either, so the estimate stays
  unbiased and a pair less diverse than the others is pushed down. A batch of one group has no other group: its
  baseline is 0 (the config warns about `k = 2`).
- `other_rewards_baselines`, for any other group reward: RLOO's, the mean of the other `k - 1` rewards. When `r_j`
  itself depends on `y_i` (it does for a group reward) this baseline is not exactly independent of `y_i`; it is the
  usual low-variance choice.

Neither advantage is divided by a standard deviation: `diversity_coef * (r_i - b_i)` keeps `diversity_coef` a real
weight.
"""

from __future__ import annotations

import torch


def pairs_among_others_baselines(rewards: torch.Tensor, num_generations: int) -> torch.Tensor:
    """Mean pairwise term `s` among the other `k - 1` samples of each sample's group, from the pairwise rewards `r`
    (for `k = 2`: the mean reward of the other groups, see the module docstring)."""
    grouped = rewards.view(-1, num_generations)
    if num_generations == 2:
        num_groups = grouped.shape[0]
        if num_groups == 1:
            return torch.zeros_like(rewards)
        group_means = grouped.mean(-1, keepdim=True)
        others = (group_means.sum() - group_means) / (num_groups - 1)
        return others.expand_as(grouped).reshape(-1)
    return ((grouped.sum(-1, keepdim=True) - 2 * grouped) / (num_generations - 2)).reshape(-1)


def other_rewards_baselines(rewards: torch.Tensor, num_generations: int) -> torch.Tensor:
    """The mean of the other `k - 1` rewards of each sample's group (RLOO's baseline)."""
    if num_generations < 2:
        raise ValueError(f"A leave-one-out baseline needs at least 2 samples per prompt, got {num_generations}.")
    grouped = rewards.view(-1, num_generations)
    return ((grouped.sum(-1, keepdim=True) - grouped) / (num_generations - 1)).reshape(-1)


def diversity_advantages(rewards: torch.Tensor, num_generations: int) -> torch.Tensor:
    """`r_i - b_i` for a pairwise measure's rewards, `b_i` the mean over the pairs among the others: unbiased."""
    return rewards - pairs_among_others_baselines(rewards, num_generations)


def is_pairwise(reward) -> bool:
    """Whether a group reward declares itself a mean of symmetric pairwise terms (`pairwise = True`)."""
    return bool(getattr(reward, "pairwise", False))


def group_advantages(rewards: torch.Tensor, num_generations: int, pairwise: bool) -> torch.Tensor:
    """`r_i - b_i`: the pairs-among-others baseline for pairwise measures, the other rewards' mean otherwise."""
    if pairwise:
        return diversity_advantages(rewards, num_generations)
    return rewards - other_rewards_baselines(rewards, num_generations)
