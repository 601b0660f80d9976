"""Paired comparisons and front gaps at matched quality, against direct computations."""

import numpy as np
import pytest

from trl_diversity.toolkit.comparison import front, matched_quality_gap, paired_difference


def test_paired_difference_mean_ci_and_win_rate():
    rng = np.random.default_rng(0)
    b = rng.normal(size=200)
    a = b + 0.5 + rng.normal(scale=0.1, size=200)
    result = paired_difference(a, b)
    assert result["mean"] == pytest.approx(np.mean(a - b))
    assert result["low"] < result["mean"] < result["high"]
    assert 0.45 < result["low"] and result["high"] < 0.55  # the shared noise of b cancels: a tight interval
    assert paired_difference([1, 2, 3], [1, 1, 4])["win_rate"] == pytest.approx((0.5 + 1 + 0) / 3)
    with pytest.raises(ValueError, match="same prompts"):
        paired_difference([1, 2], [1, 2, 3])


def test_front_keeps_non_dominated_points_sorted_by_quality():
    points = [(0.1, 0.9), (0.2, 0.5), (0.3, 0.6), (0.5, 0.2), (0.4, 0.1)]
    assert front(points) == [(0.1, 0.9), (0.3, 0.6), (0.5, 0.2)]


def _family(curve, qualities, noise, rng, n=40):
    """Points on diversity = curve(quality), each with per-prompt values scattered around the means."""
    return [
        {
            "q": (q + rng.normal(scale=noise, size=n)).tolist(),
            "d": (curve(q) + rng.normal(scale=noise, size=n)).tolist(),
        }
        for q in qualities
    ]


def test_matched_quality_gap_recovers_a_known_offset():
    rng = np.random.default_rng(1)
    a = _family(lambda q: 1.2 - q, [0.3, 0.4, 0.5, 0.6], 0.01, rng)
    b = _family(lambda q: 1.0 - q, [0.35, 0.45, 0.55, 0.65], 0.01, rng)
    gap = matched_quality_gap(a, b, "q", "d", resamples=300)
    assert gap["mean"] == pytest.approx(0.2, abs=0.02)
    assert gap["low"] > 0.15 and gap["high"] < 0.25
    assert gap["quality_range"][0] == pytest.approx(0.35, abs=0.01)
    assert gap["quality_range"][1] == pytest.approx(0.6, abs=0.01)
    swapped = matched_quality_gap(b, a, "q", "d", resamples=300)
    assert swapped["mean"] == pytest.approx(-gap["mean"])


def test_matched_quality_gap_is_none_without_a_shared_range():
    rng = np.random.default_rng(2)
    a = _family(lambda q: 1 - q, [0.1, 0.2], 0.001, rng)
    b = _family(lambda q: 1 - q, [0.5, 0.6], 0.001, rng)
    assert matched_quality_gap(a, b, "q", "d", resamples=50) is None


def test_gap_to_front_reads_the_front_at_the_points_own_quality():
    from trl_diversity.toolkit.comparison import gap_to_front

    # A front from (0.4, 0.8) down to (0.6, 0.4); a model at quality 0.5 with diversity 0.7 lies 0.1 above it.
    family = [{"q": [0.4, 0.4], "d": [0.8, 0.8]}, {"q": [0.6, 0.6], "d": [0.4, 0.4]}]
    gap = gap_to_front({"q": [0.5, 0.5], "d": [0.7, 0.7]}, family, "q", "d", resamples=50)
    assert gap["mean"] == pytest.approx(0.1) and gap["low"] == pytest.approx(0.1) and gap["inside_resamples"] == 1.0
    assert gap_to_front({"q": [0.7, 0.7], "d": [0.7, 0.7]}, family, "q", "d", resamples=50) is None  # outside


def test_matched_quality_gap_ci_is_one_quantity_on_a_fixed_range():
    """Every resample measures the gap over the point estimate's shared range: none is dropped, and the share
    of resamples where a front does not reach across that range is reported, not hidden."""
    rng = np.random.default_rng(3)
    # Fronts that barely overlap, with noisy prompts: many resamples move an end point out of the shared range.
    a = _family(lambda q: 1.2 - q, [0.3, 0.4, 0.5], 0.2, rng)
    b = _family(lambda q: 1.0 - q, [0.48, 0.6, 0.7], 0.2, rng)
    gap = matched_quality_gap(a, b, "q", "d", resamples=200)
    assert gap["resamples_used"] == 200
    assert 0.0 < gap["resamples_outside_range"] < 1.0
    again = matched_quality_gap(a, b, "q", "d", resamples=200)
    assert again["quality_range"] == gap["quality_range"] and again["low"] == gap["low"]


def test_gap_to_front_keeps_resamples_outside_the_front():
    from trl_diversity.toolkit.comparison import gap_to_front

    rng = np.random.default_rng(4)
    family = _family(lambda q: 1.0 - q, [0.3, 0.5], 0.01, rng)
    point = {"q": list(0.48 + 0.1 * rng.standard_normal(40)), "d": list(0.6 + 0.01 * rng.standard_normal(40))}
    point["q"] = [q - np.mean(point["q"]) + 0.48 for q in point["q"]]  # its mean inside the front's range
    gap = gap_to_front(point, family, "q", "d", resamples=200)
    assert gap["resamples_used"] == 200 and 0.0 < 1 - gap["inside_resamples"] < 1.0


def test_holm_corrects_any_of_several_judges_agreeing():
    from trl_diversity.toolkit.comparison import holm_rejections

    # Alone, 0.03 < 0.05; among four judges, Holm asks the smallest p for 0.05 / 4.
    assert holm_rejections({"a": 0.03, "b": 0.5, "c": 0.6, "d": 0.7}) == set()
    assert holm_rejections({"a": 0.001, "b": 0.02, "c": 0.6, "d": 0.7}) == {"a"}  # 0.02 > 0.05 / 3
    assert holm_rejections({"a": 0.001, "b": 0.01, "c": 0.02, "d": 0.04}) == {"a", "b", "c", "d"}


def test_paired_difference_has_a_bootstrap_p_value():
    clear = paired_difference([1.0 + 0.01 * i for i in range(30)], [0.0] * 30)
    assert clear["p_value"] < 0.01
    rng = np.random.default_rng(5)
    noise = paired_difference(list(rng.standard_normal(30)), list(rng.standard_normal(30)))
    assert noise["p_value"] > 0.05
