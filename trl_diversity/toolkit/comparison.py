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
    # Two-sided bootstrap p-value of "no difference": twice the share of resampled means on the far side of zero
    # (the smallest confidence level whose percentile interval contains 0), at least one resample's worth.
    far_side = min(np.mean(means <= 0), np.mean(means >= 0))
    p_value = float(min(1.0, max(2 * far_side, 1 / resamples)))
    return {
        "mean": float(difference.mean()),
        "low": low,
        "high": high,
        "win_rate": wins,
        "n": int(difference.size),
        "p_value": p_value,
    }


def holm_rejections(p_values: dict[str, float], alpha: float = 0.05) -> set[str]:
    """The hypotheses Holm's step-down procedure rejects at family-wise error `alpha`: "any of m judges agrees" is
    only evidence once corrected for asking m of them."""
    rejected = set()
    ordered = sorted(p_values.items(), key=lambda item: item[1])
    for rank, (name, p_value) in enumerate(ordered):
        if p_value > alpha / (len(ordered) - rank):
            break
        rejected.add(name)
    return rejected


def front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The upper-right Pareto front of (quality, diversity) points, sorted by quality."""
    ordered = sorted(points, key=lambda p: (-p[0], -p[1]))
    kept, best_diversity = [], -np.inf
    for quality, diversity in ordered:  # from the highest quality down, keep points that add diversity
        if diversity > best_diversity:
            kept.append((quality, diversity))
            best_diversity = diversity
    return sorted(kept)


def _shared_range(family_a, family_b) -> tuple[float, float] | None:
    """The quality range both families' fronts span, None when they share none."""
    front_a, front_b = front(family_a), front(family_b)
    low, high = max(front_a[0][0], front_b[0][0]), min(front_a[-1][0], front_b[-1][0])
    return (float(low), float(high)) if high > low else None


def _gap_on_grid(family_a, family_b, grid: np.ndarray) -> tuple[float, bool]:
    """The mean diversity gap of front A over front B on a fixed quality grid, and whether both fronts span it. A
    front is read at its end point beyond its range (`np.interp` holds the end value)."""
    front_a, front_b = front(family_a), front(family_b)
    spans = all(f[0][0] <= grid[0] and grid[-1] <= f[-1][0] for f in (front_a, front_b))
    diversity_a = np.interp(grid, [q for q, _ in front_a], [d for _, d in front_a])
    diversity_b = np.interp(grid, [q for q, _ in front_b], [d for _, d in front_b])
    return float(np.mean(diversity_a - diversity_b)), spans


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
    interpolated in quality; the gap is averaged over an even grid of the shared quality range. That range is fixed
    by the point estimate, so every resample measures the same quantity: the CI resamples prompts jointly for every
    point of both families (paired), rebuilding both fronts each time and reading them on that fixed grid (a front
    that no longer reaches across it is read at its end point). `resamples_outside_range` is the share of resamples
    where that happened. None when the fronts share no quality range.
    """

    a, b = _arrays(family_a, quality, diversity), _arrays(family_b, quality, diversity)
    sizes = {q.size for q, _ in a + b} | {d.size for _, d in a + b}
    if len(sizes) != 1:
        raise ValueError("Every point of both families must be evaluated on the same prompts.")
    num_prompts = sizes.pop()
    everything = np.arange(num_prompts)
    shared = _shared_range(_means(a, everything), _means(b, everything))
    if shared is None:
        return None
    grid = np.linspace(*shared, grid_size)
    estimate, _ = _gap_on_grid(_means(a, everything), _means(b, everything), grid)
    samples = [
        _gap_on_grid(_means(a, index), _means(b, index), grid)
        for index in _bootstrap_indices(num_prompts, resamples, seed)
    ]
    gaps = np.array([gap for gap, _ in samples])
    low, high = _interval(gaps, confidence)
    return {
        "mean": estimate,
        "low": low,
        "high": high,
        "quality_range": list(shared),
        "resamples_used": int(gaps.size),
        "resamples_outside_range": float(np.mean([not spans for _, spans in samples])),
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
    A resample whose point falls outside its front's range compares against the front's end point and is counted
    (`inside_resamples` is the share that stayed inside), not dropped. None when the point's quality lies outside the
    front's quality range.
    """

    own, members = _arrays([point], quality, diversity), _arrays(family, quality, diversity)

    def gap(index) -> tuple[float, bool]:
        [(own_quality, own_diversity)] = _means(own, index)
        edge = front(_means(members, index))
        inside = edge[0][0] <= own_quality <= edge[-1][0]
        return own_diversity - float(np.interp(own_quality, [q for q, _ in edge], [d for _, d in edge])), inside

    num_prompts = len(point[quality])
    estimate, inside = gap(np.arange(num_prompts))
    if not inside:
        return None
    samples = [gap(index) for index in _bootstrap_indices(num_prompts, resamples, seed)]
    gaps = np.array([value for value, _ in samples])
    low, high = _interval(gaps, confidence)
    return {
        "mean": estimate,
        "low": low,
        "high": high,
        "resamples_used": int(gaps.size),
        "inside_resamples": float(np.mean([inside for _, inside in samples])),
    }
