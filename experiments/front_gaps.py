"""Front gaps at matched adherence with bias-corrected and accelerated (BCa) bootstrap intervals.

The gaps are those of `trl_diversity.toolkit.comparison` (`matched_quality_gap`: front against front over their shared
quality range; `gap_to_front`: one model against a front at its own quality), computed on the same bootstrap resamples
(the same seed), so the percentile interval the toolkit reports is reproduced here exactly. A front is a maximum over
points, so its resampled values are biased upwards where a front's end is made of a few noisy points: the entropy
front's gap over the `beta = 0`-`50` dial has a point estimate of -0.0086 and a bootstrap median of -0.002 (#33). BCa
corrects the percentiles for that bias (`z0`, from the share of resamples below the estimate) and for the statistic's
skewness (the acceleration `a`, from a leave-one-prompt-out jackknife). Each gap also carries the p-value that inverts
the BCa interval (the smallest level whose interval reaches zero), for Holm's correction across the comparisons of a
claim.
"""

from __future__ import annotations

from statistics import NormalDist

import numpy as np

from trl_diversity.toolkit.comparison import RESAMPLES, front

_NORMAL = NormalDist()


def _indices(num_prompts: int, resamples: int, seed: int) -> np.ndarray:
    # The toolkit's resamples, drawn the same way from the same seed.
    return np.random.default_rng(seed).integers(0, num_prompts, size=(resamples, num_prompts))


def _arrays(family: list[dict], quality: str, diversity: str) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(np.asarray(p[quality], dtype=float), np.asarray(p[diversity], dtype=float)) for p in family]


def _means(arrays, index) -> list[tuple[float, float]]:
    return [(float(np.nanmean(q[index])), float(np.nanmean(d[index]))) for q, d in arrays]


def _interp(edge: list[tuple[float, float]], at):
    return np.interp(at, [q for q, _ in edge], [d for _, d in edge])


def bca_interval(
    estimate: float, samples: np.ndarray, jackknife: np.ndarray, confidence: float = 0.95
) -> dict[str, float]:
    """The BCa interval of a statistic from its bootstrap samples and its leave-one-out jackknife values, the
    percentile interval and median of the same samples (what BCa changes), the bias correction `z0`, the acceleration
    and the two-sided p-value of "the statistic is zero" that inverts the BCa interval (at least one resample's
    worth), with the plain percentile bootstrap's p-value beside it."""
    samples = np.asarray(samples, dtype=float)
    samples = samples[np.isfinite(samples)]
    count = samples.size
    floor = 1 / (2 * count)

    def quantile(share: float) -> float:  # Phi^-1 of a share, kept off 0 and 1
        return _NORMAL.inv_cdf(min(max(share, floor), 1 - floor))

    z0 = quantile((np.sum(samples < estimate) + 0.5 * np.sum(samples == estimate)) / count)
    spread = np.mean(jackknife) - np.asarray(jackknife, dtype=float)
    denominator = 6 * np.sum(spread**2) ** 1.5
    acceleration = float(np.sum(spread**3) / denominator) if denominator > 0 else 0.0

    def adjusted(z: float) -> float:
        return _NORMAL.cdf(z0 + (z0 + z) / (1 - acceleration * (z0 + z)))

    tail = (1 - confidence) / 2
    low, high = np.percentile(samples, [100 * adjusted(_NORMAL.inv_cdf(s)) for s in (tail, 1 - tail)])
    plain_low, median, plain_high = np.percentile(samples, [100 * tail, 50, 100 * (1 - tail)])
    # Invert the interval at zero: the level z whose adjusted percentile is zero's share of the samples.
    below_zero = np.mean(samples < 0) + 0.5 * np.mean(samples == 0)
    w = quantile(below_zero) - z0
    if 1 + acceleration * w <= 0:  # zero lies below every percentile the BCa map can reach
        p_value = 1 / count
    else:
        z = w / (1 + acceleration * w) - z0
        p_value = min(1.0, max(2 * min(_NORMAL.cdf(z), 1 - _NORMAL.cdf(z)), 1 / count))
    return {
        "low": float(low),
        "high": float(high),
        "percentile_low": float(plain_low),
        "percentile_high": float(plain_high),
        "median": float(median),
        "z0": float(z0),
        "acceleration": acceleration,
        "p_value": float(p_value),
        # The plain percentile bootstrap's p-value (z0 = a = 0), for what BCa changes.
        "percentile_p_value": float(min(1.0, max(2 * min(below_zero, 1 - below_zero), 1 / count))),
    }


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
    """`trl_diversity.toolkit.comparison.matched_quality_gap` (the same estimate, range, resamples and
    `resamples_outside_range`) with a BCa interval (`low`, `high`) and its p-value; the toolkit's percentile interval
    is kept as `percentile_low`, `percentile_high`. None when the fronts share no quality range."""
    a, b = _arrays(family_a, quality, diversity), _arrays(family_b, quality, diversity)
    sizes = {q.size for q, _ in a + b} | {d.size for _, d in a + b}
    if len(sizes) != 1:
        raise ValueError("Every point of both families must be evaluated on the same prompts.")
    num_prompts = sizes.pop()
    everything = np.arange(num_prompts)
    front_a, front_b = front(_means(a, everything)), front(_means(b, everything))
    shared = max(front_a[0][0], front_b[0][0]), min(front_a[-1][0], front_b[-1][0])
    if not shared[1] > shared[0]:
        return None
    grid = np.linspace(*shared, grid_size)

    def gap(index) -> tuple[float, bool]:
        edge_a, edge_b = front(_means(a, index)), front(_means(b, index))
        spans = all(f[0][0] <= grid[0] and grid[-1] <= f[-1][0] for f in (edge_a, edge_b))
        return float(np.mean(_interp(edge_a, grid) - _interp(edge_b, grid))), spans

    estimate, _ = gap(everything)
    samples = [gap(index) for index in _indices(num_prompts, resamples, seed)]
    jackknife = np.array([gap(np.delete(everything, i))[0] for i in range(num_prompts)])
    return {
        "mean": estimate,
        **bca_interval(estimate, np.array([value for value, _ in samples]), jackknife, confidence),
        "quality_range": [float(shared[0]), float(shared[1])],
        "resamples_used": len(samples),
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
    """`trl_diversity.toolkit.comparison.gap_to_front` (one model's diversity over a front at the model's own
    quality, the same resamples) with a BCa interval and its p-value. None when the point lies outside the front's
    quality range."""
    own, members = _arrays([point], quality, diversity), _arrays(family, quality, diversity)

    def gap(index) -> tuple[float, bool]:
        [(own_quality, own_diversity)] = _means(own, index)
        edge = front(_means(members, index))
        inside = edge[0][0] <= own_quality <= edge[-1][0]
        return own_diversity - float(_interp(edge, own_quality)), inside

    num_prompts = len(point[quality])
    everything = np.arange(num_prompts)
    estimate, inside = gap(everything)
    if not inside:
        return None
    samples = [gap(index) for index in _indices(num_prompts, resamples, seed)]
    jackknife = np.array([gap(np.delete(everything, i))[0] for i in range(num_prompts)])
    return {
        "mean": estimate,
        **bca_interval(estimate, np.array([value for value, _ in samples]), jackknife, confidence),
        "resamples_used": len(samples),
        "inside_resamples": float(np.mean([inside for _, inside in samples])),
    }
