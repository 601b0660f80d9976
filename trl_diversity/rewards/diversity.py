"""The group diversity reward: how different each sample is from the other samples drawn for the same prompt.

With embeddings `e_1..e_k` of one prompt's `k` completions and `s(i, j) = 1 - cos(e_i, e_j)`:

- per-sample reward `d_i = mean_{j != i} s(i, j)`; the mean of the `d_i` is the group's mean pairwise dissimilarity;
- its baseline and advantage are in `baselines.py`.

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
