"""The group diversity reward: how different each sample is from the other samples drawn for the same prompt.

With embeddings `e_1..e_k` of one prompt's `k` completions and `s(i, j) = 1 - cos(e_i, e_j)`:

- per-sample reward `d_i = mean_{j != i} s(i, j)`; the mean of the `d_i` is the group's mean pairwise dissimilarity;
- leave-one-out baseline `b_i` = mean pairwise dissimilarity among the other `k - 1` samples. It does not depend on
  sample `i`, so REINFORCE with `d_i - b_i` stays unbiased. Summing pairs shows
  `b_i = (sum_j d_j - 2 d_i) / (k - 2)`, hence `d_i - b_i = k / (k - 2) * (d_i - mean_j d_j)`.
- With `k = 2` there is no pair among the others: both samples get the same reward `s(1, 2)`, and a zero baseline
  would make every diversity advantage non-negative (pushing up every pair, only some more than others). The
  baseline is then the mean reward of the batch's *other* groups, which does not depend on the sample either, so the
  estimate stays unbiased and a pair less diverse than the others is pushed down. A batch of one group has no other
  group: its baseline is 0 (the config warns about `k = 2`).

Completions are consecutive in the batch: rows `g * k .. g * k + k - 1` belong to prompt `g`.
"""

from __future__ import annotations

import torch


def pairwise_dissimilarity(embeddings: torch.Tensor, num_generations: int) -> torch.Tensor:
    """`[G, k, k]` matrices of `1 - cos` between the completions of each prompt (zero diagonal)."""
    num_rows = embeddings.shape[0]
    if num_generations < 2:
        raise ValueError(f"Diversity needs at least 2 samples per prompt, got num_generations={num_generations}.")
    if num_rows % num_generations != 0:
        raise ValueError(f"{num_rows} embeddings cannot be split into groups of num_generations={num_generations}.")
    unit = torch.nn.functional.normalize(embeddings.float(), dim=-1, eps=1e-8)
    groups = unit.view(-1, num_generations, unit.shape[-1])
    dissimilarity = 1.0 - groups @ groups.transpose(1, 2)
    # Exact zeros on the diagonal, and no tiny negatives from rounding: s lies in [0, 2].
    dissimilarity = dissimilarity.clamp(0.0, 2.0)
    return dissimilarity * (1 - torch.eye(num_generations, device=embeddings.device))


def group_diversity_rewards(embeddings: torch.Tensor, num_generations: int) -> torch.Tensor:
    """Per-sample diversity reward `d_i = mean_{j != i} (1 - cos(e_i, e_j))`, shape `[N]`."""
    dissimilarity = pairwise_dissimilarity(embeddings, num_generations)
    return (dissimilarity.sum(-1) / (num_generations - 1)).reshape(-1)


def leave_one_out_baselines(rewards: torch.Tensor, num_generations: int) -> torch.Tensor:
    """Mean pairwise dissimilarity among the other `k - 1` samples of each sample's group, from the rewards `d`
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


def diversity_advantages(rewards: torch.Tensor, num_generations: int) -> torch.Tensor:
    """`d_i - b_i` with the leave-one-out baseline: unbiased, and not divided by any standard deviation."""
    return rewards - leave_one_out_baselines(rewards, num_generations)
