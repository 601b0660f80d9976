"""Pareto fronts and their hypervolume, for points to be maximised on two axes (quality, diversity)."""

from __future__ import annotations


def pareto_mask(points: list[tuple[float, float]]) -> list[bool]:
    """True for each point that no other point dominates (at least as good on both axes, better on one)."""

    def dominated(p):
        return any(q[0] >= p[0] and q[1] >= p[1] and (q[0] > p[0] or q[1] > p[1]) for q in points)

    return [not dominated(p) for p in points]


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The non-dominated points, sorted by the first axis (so the second decreases along the front)."""
    return sorted({p for p, keep in zip(points, pareto_mask(points)) if keep})


def hypervolume(points: list[tuple[float, float]], reference: tuple[float, float]) -> float:
    """Area dominated by the points and bounded below by `reference` (points below it on an axis add nothing)."""
    front = [p for p in pareto_front(points) if p[0] > reference[0] and p[1] > reference[1]]
    area, previous_x = 0.0, reference[0]
    # Sorted by x increasing, y decreasing: each point adds the strip between the previous x and its own.
    for index, (x, _) in enumerate(front):
        height = max(y for _, y in front[index:]) - reference[1]
        area += (x - previous_x) * height
        previous_x = x
    return area
