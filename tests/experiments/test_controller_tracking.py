"""The controller-tracking figures of the comparison page, on training logs whose answer is known."""

import math
import statistics

import pytest

from experiments.compare_finetunes import TRACKING_WINDOW, controller_tracking


def log_of(measured: list[float], target: float, warmup: int = 2) -> dict:
    """A training log with one row per generation batch; the target is logged from the end of the warm-up on."""
    rows = []
    for batch, value in enumerate(measured):
        row = {"diversity/pairwise": value, "diversity/coef": 15.0 + batch, "step": batch + 1}
        if batch >= warmup:
            row["diversity/target"] = target
        rows.append(row)
    return {"log_history": rows}


def test_a_run_on_its_target_reaches_it_at_once_and_holds_it():
    measured = [0.5] * 20
    tracking = controller_tracking(log_of(measured, 0.5))
    assert tracking["target_set_at"] == 3
    assert tracking["batches_to_target"] == 3 + TRACKING_WINDOW - 1  # the first full window after the target is set
    assert tracking["share_within_second_half"] == 1.0
    assert tracking["mean_error_second_half"] == 0.0 and tracking["mean_error_second_half_ci"] == [0.0, 0.0]
    assert (tracking["coef_first"], tracking["coef_last"]) == (15.0, 34.0)


def test_a_run_below_its_target_never_reaches_it_and_its_error_ci_excludes_zero():
    measured = [0.40, 0.44] * 10  # 0.42 on average, 16% below 0.5
    tracking = controller_tracking(log_of(measured, 0.5))
    assert tracking["batches_to_target"] is None and tracking["share_within_second_half"] == 0.0
    second_half = measured[10:]
    assert tracking["mean_error_second_half"] == pytest.approx(-0.08)
    assert tracking["mean_abs_error_second_half"] == pytest.approx(0.08)
    half_width = 1.96 * statistics.stdev(second_half) / math.sqrt(len(second_half))
    low, high = tracking["mean_error_second_half_ci"]
    assert (low, high) == pytest.approx((-0.08 - half_width, -0.08 + half_width)) and high < 0


def test_a_run_without_a_target_has_no_tracking():
    assert controller_tracking({"log_history": [{"diversity/pairwise": 0.5, "diversity/coef": 15.0}]}) is None
