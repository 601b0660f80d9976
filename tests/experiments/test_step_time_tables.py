"""`benchmarks/step_time.py`'s tables and ratios, from recorded steps (the benchmark itself trains, so it is run by
hand, not here): the default comparison's table is rebuilt from its committed JSON, and `--compare rloo` names the
two method trainers and divides RLOO's step by GRPO's."""

import json
from pathlib import Path

from benchmarks import step_time

ROOT = Path(__file__).resolve().parents[2]


def test_the_committed_default_table_is_rebuilt_from_its_json():
    result = json.loads((ROOT / "benchmarks" / "results" / "step_time.json").read_text())
    table = step_time.markdown(result)
    assert table == (ROOT / "benchmarks" / "results" / "step_time.md").read_text()
    assert "| | GRPOTrainer | DiversityCFGTrainer |" in table
    assert f"median wall step: {result['ratio_median']:.2f}x** (target <= 1.3x)" in table


def recorded_steps(medians: dict[str, list[float]]) -> list[dict]:
    """Three steps per trainer per round, the first step of each trainer being warm-up (left out)."""
    steps = []
    for label, per_round in medians.items():
        for round_index, median in enumerate(per_round):
            for offset in (-0.5, 0.0, 0.5):
                steps.append({"trainer": label, "round": round_index, "total": median + offset, "cpu": median})
        steps[len(steps) - 3 * len(per_round)]["total"] = 100.0  # a slow warm-up step, not measured
    return steps


def test_rloo_is_divided_by_grpo_round_by_round():
    steps = recorded_steps({"grpo": [10.0, 20.0], "rloo": [15.0, 20.0]})
    assert step_time.per_round_ratios(steps, 2, pair=step_time.PAIRS["rloo"]) == [15.25 / 10.25, 1.0]


def test_the_rloo_table_names_both_method_trainers():
    steps = recorded_steps({"grpo": [10.0], "rloo": [15.0]})
    for step in steps:
        step.update({part: 0.0 for part in step_time.PARTS}, load_1min=1.0)
    summaries = {label: step_time.summarize(steps, label) for label in ("grpo", "rloo")}
    result = {
        "machine": "test",
        "config": {
            "batch_size": 8,
            "num_generations": 4,
            "max_completion_length": 48,
            "rounds": 1,
            "steps_per_round": 3,
            "compare": "rloo",
        },
        **summaries,
        "ratio_median": summaries["rloo"]["median_step_s"] / summaries["grpo"]["median_step_s"],
        "ratio_median_cpu": 1.5,
        "ratio_per_round": [1.5],
        "ratio_per_round_median": 1.5,
    }
    table = step_time.markdown(result)
    assert "# Step time: DiversityCFGRLOOTrainer vs DiversityCFGTrainer" in table
    assert "| | DiversityCFGTrainer | DiversityCFGRLOOTrainer |" in table
    assert "DiversityCFGRLOOTrainer / DiversityCFGTrainer, median wall step: 1.49x**. " in table
    assert "target <= 1.3x" not in table
