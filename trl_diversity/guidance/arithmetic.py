"""The one implementation of guidance arithmetic, for the trainer's teacher and for `generate` alike.

    guided = c + sum_j w_j (c - n_j)

over the conditional branch `c` and the negative branches `n_j`. The weights of this affine combination sum to 1,
so it holds for log-probabilities, for logits (a per-row constant apart) and, because the LM head is affine, for
the final hidden states that feed the head: the teacher combines hidden states and never builds a branch's
`(..., vocab)` logits. An early-layer negative enters as its hidden state after the model's final norm, which is what
the head reads, so it combines the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def combine(conditional: torch.Tensor, negatives: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """`c + sum_j w_j (c - n_j)`: the un-normalised guided scores (or hidden states)."""
    if len(negatives) != len(weights):
        raise ValueError(f"{len(negatives)} negative branches for {len(weights)} weights")
    if len(negatives) == 1:
        # Plain CFG's own form, u + gamma (c - u) with gamma = 1 + w: the same floats the teacher always computed.
        return negatives[0] + (1.0 + weights[0]) * (conditional - negatives[0])
    guided = conditional.clone()
    for negative, weight in zip(negatives, weights):
        if weight:
            guided = guided + weight * (conditional - negative)
    return guided


def unguided_before(guided: torch.Tensor, conditional: torch.Tensor, start: int) -> torch.Tensor:
    """Interval guidance: generated positions `0 .. start - 1` (dimension -2 of `[..., positions, features]`) take the
    conditional branch unchanged."""
    if start <= 0:
        return guided
    guided = guided.clone()
    guided[..., :start, :] = conditional[..., :start, :]
    return guided
