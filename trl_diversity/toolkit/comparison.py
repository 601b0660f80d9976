"""Paired comparisons of evaluated points on the same prompts, and of quality-diversity fronts at matched quality.

A point is the per-prompt metrics of one model (see `evaluation.summarize`'s `per_prompt`), over prompts in the same
order for every point. Because every point sees the same prompts, comparisons resample *prompts* (a paired
bootstrap): a prompt that is hard for one model is hard for the other too, and that shared variance cancels.
"""

from __future__ import annotations

import numpy as np

RESAMPLES = 2000


def _bootstrap_indices(num_prompts: int, resamples: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, num_prompts, size=(resamples, num_prompts))


def _interval(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = (1 - confidence) / 2 * 100
    low, high = np.nanpercentile(samples, [tail, 100 - tail])
    return float(low), float(high)


def paired_difference(a, b, confidence: float = 0.95, resamples: int = RESAMPLES, seed: int = 0) -> dict:
    """Mean of `a - b` over prompts with a bootstrap CI, and the share of prompts where `a` beats `b` (ties: half).

    `win_rate` is the per-prompt analogue of a pairwise preference rate ("A was more diverse on 73% of prompts").
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"Paired values need the same prompts: got {a.shape} and {b.shape}.")
    keep = ~(np.isnan(a) | np.isnan(b))
    difference = (a - b)[keep]
    if difference.size == 0:
        return {"mean": float("nan"), "low": float("nan"), "high": float("nan"), "win_rate": float("nan"), "n": 0}
    means = difference[_bootstrap_indices(difference.size, resamples, seed)].mean(axis=1)
    low, high = _interval(means, confidence)
    wins = float(np.mean((difference > 0) + 0.5 * (difference == 0)))
    return {"mean": float(difference.mean()), "low": low, "high": high, "win_rate": wins, "n": int(difference.size)}


def front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The upper-right Pareto front of (quality, diversity) points, sorted by quality."""
    ordered = sorted(points, key=lambda p: (-p[0], -p[1]))
    kept, best_diversity = [], -np.inf
    for quality, diversity in ordered:  # from the highest quality down, keep points that add diversity
        if diversity > best_diversity:
            kept.append((quality, diversity))
            best_diversity = diversity
    return sorted(kept)


def _gap_at_matched_quality(family_a, family_b, grid_size: int) -> tuple[float, float, float] | None:
    front_a, front_b = front(family_a), front(family_b)
    low = max(front_a[0][0], front_b[0][0])
    high = min(front_a[-1][0], front_b[-1][0])
    if high <= low:
        return None
    grid = np.linspace(low, high, grid_size)
    diversity_a = np.interp(grid, [q for q, _ in front_a], [d for _, d in front_a])
    diversity_b = np.interp(grid, [q for q, _ in front_b], [d for _, d in front_b])
    return float(np.mean(diversity_a - diversity_b)), float(low), float(high)


def _arrays(family: list[dict], quality: str, diversity: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each point's per-prompt (quality, diversity) values as arrays."""
    return [(np.asarray(p[quality], dtype=float), np.asarray(p[diversity], dtype=float)) for p in family]


def _means(arrays: list[tuple[np.ndarray, np.ndarray]], index: np.ndarray) -> list[tuple[float, float]]:
    """Each point's (quality, diversity) means over the prompts `index` selects (a bootstrap resample)."""
    return [(float(np.nanmean(q[index])), float(np.nanmean(d[index]))) for q, d in arrays]


def matched_quality_gap(
    family_a: list[dict],
    family_b: list[dict],
    quality: str,
    diversity: str,
    confidence: float = 0.95,
    resamples: int = RESAMPLES,
    grid_size: int = 50,
    seed: int = 0,
) -> dict | None:
    """Mean diversity gap of front A over front B across the quality range both fronts span.

    Each family is a list of points' `per_prompt` dicts. Each front is its family's Pareto front, linearly
    interpolated in quality; the gap is averaged over an even grid of the shared quality range. The CI resamples
    prompts jointly for every point of both families (paired), rebuilding both fronts each time. None when the
    fronts share no quality range.
    """

    a, b = _arrays(family_a, quality, diversity), _arrays(family_b, quality, diversity)
    sizes = {q.size for q, _ in a + b} | {d.size for _, d in a + b}
    if len(sizes) != 1:
        raise ValueError("Every point of both families must be evaluated on the same prompts.")

    def gap(index):
        return _gap_at_matched_quality(_means(a, index), _means(b, index), grid_size)

    num_prompts = sizes.pop()
    estimate = gap(np.arange(num_prompts))
    if estimate is None:
        return None
    # A resample whose fronts happen not to overlap contributes nothing; their share is reported.
    samples = [gap(index) for index in _bootstrap_indices(num_prompts, resamples, seed)]
    gaps = np.array([s[0] for s in samples if s is not None])
    low, high = _interval(gaps, confidence) if gaps.size else (float("nan"), float("nan"))
    return {
        "mean": estimate[0],
        "low": low,
        "high": high,
        "quality_range": [estimate[1], estimate[2]],
        "overlapping_resamples": float(gaps.size / resamples),
    }


def gap_to_front(
    point: dict,
    family: list[dict],
    quality: str,
    diversity: str,
    confidence: float = 0.95,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> dict | None:
    """Diversity of one model over a front's, at the model's own quality: how much more diverse it is than what the
    front offers at the same quality (a single model has no front of its own to compare at matched quality).

    `point` and each member of `family` are `per_prompt` dicts on the same prompts. The front (Pareto, linearly
    interpolated) is read at the point's mean quality; the CI resamples prompts jointly for the point and the family.
    None when the point's quality lies outside the front's quality range.
    """

    own, members = _arrays([point], quality, diversity), _arrays(family, quality, diversity)

    def gap(index):
        [(own_quality, own_diversity)] = _means(own, index)
        edge = front(_means(members, index))
        if not edge[0][0] <= own_quality <= edge[-1][0]:
            return None
        return own_diversity - float(np.interp(own_quality, [q for q, _ in edge], [d for _, d in edge]))

    num_prompts = len(point[quality])
    estimate = gap(np.arange(num_prompts))
    if estimate is None:
        return None
    samples = [gap(index) for index in _bootstrap_indices(num_prompts, resamples, seed)]
    gaps = np.array([s for s in samples if s is not None])
    low, high = _interval(gaps, confidence) if gaps.size else (float("nan"), float("nan"))
    return {"mean": estimate, "low": low, "high": high, "inside_resamples": float(gaps.size / resamples)}
