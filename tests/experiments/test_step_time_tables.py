"""`benchmarks/step_time.py`'s tables, ratios and timers. The benchmark itself trains the default model, so it is run
by hand, not here: both configurations' reports are rebuilt from their committed JSON, the floor and `--compare rloo`
are checked on recorded steps, and the split's timers on a tiny LoRA trainer."""

import json
from pathlib import Path

import pytest

from benchmarks import step_time

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["step_time", "step_time_lora_qv8"])
def test_the_committed_tables_are_rebuilt_from_their_json(name):
    """Both configurations' reports: the table, the split with every part, the teacher's branches and the floor."""
    result = json.loads((ROOT / "benchmarks" / "results" / f"{name}.json").read_text())
    table = step_time.markdown(result)
    assert table == (ROOT / "benchmarks" / "results" / f"{name}.md").read_text()
    assert "| | GRPOTrainer | DiversityCFGTrainer |" in table
    assert f"median wall step: {result['ratio_median']:.2f}x** (target <= 1.15x)" in table
    for _part, label, indented in step_time.SPLIT_ROWS:
        assert f"| {'&nbsp;&nbsp;' if indented else ''}{label} |" in table
    assert "The teacher's branches, each alone on the same batch" in table
    floor = result["floor"]["teacher"]["median"]
    assert f"only DiversityCFGTrainer's two teacher forwards (contexts and completions): {floor:.2f}x" in table
    assert result["config"]["config"] == ("default-job" if name == "step_time" else "lora-qv8")


def recorded_steps(medians: dict[str, list[float]]) -> list[dict]:
    """Three steps per trainer per round, the first step of each trainer being warm-up (left out)."""
    steps = []
    for label, per_round in medians.items():
        for round_index, median in enumerate(per_round):
            for offset in (-0.5, 0.0, 0.5):
                steps.append({"trainer": label, "round": round_index, "total": median + offset, "cpu": median})
        steps[len(steps) - 3 * len(per_round)]["total"] = 100.0  # a slow warm-up step, not measured
    return steps


def test_the_floor_adds_only_the_candidates_teacher_to_the_baselines_step():
    steps = recorded_steps({"grpo": [10.0, 20.0], "ours": [15.0, 30.0]})
    for step in steps:
        step.update(teacher_contexts=0.25, teacher_completions=0.75, teacher_rest=9.0)  # the rest is no floor
        step.update(distill_forward=0.5, distill_backward=0.25, diversity_reward=0.25)
    floor = step_time.floors(steps, 2)
    # round 0: GRPO's measured steps are 10.0 and 10.5 (median 10.25), round 1: 19.5, 20.0, 20.5 (median 20.0)
    assert floor["teacher"]["per_round"] == [11.25 / 10.25, 21.0 / 20.0]
    assert floor["teacher_distillation_diversity"]["per_round"] == [12.25 / 10.25, 22.0 / 20.0]


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


def test_the_split_times_every_part_of_a_tiny_lora_step(tiny_checkpoint, tmp_path, monkeypatch):
    """The benchmark's timers on a tiny LoRA trainer: every part of the split is measured, the nested parts fit
    inside their parts, and the teacher's branches are timed alone after each step."""
    import accelerate.utils
    import trl.trainer.grpo_trainer as grpo_module
    import trl.trainer.rloo_trainer as rloo_module
    from peft import LoraConfig
    from tiny_training import make_trainer

    import trl_diversity.trainer.method as method

    # The benchmark patches these module functions for its whole process; the test puts them back.
    monkeypatch.setattr(method, "chunked_token_divergence", method.chunked_token_divergence)
    for module in (grpo_module, rloo_module, accelerate.utils):
        for name in ("gather", "gather_object"):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, getattr(module, name))
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    trainer = make_trainer(tiny_checkpoint, tmp_path, peft_config=lora, max_steps=2)
    recorder = step_time.StepRecorder()
    recorder.label = "ours"
    trainer.add_callback(step_time.make_callback(recorder))
    step_time.instrument(trainer, recorder)
    step_time.instrument_module_collectives(recorder)
    step_time.instrument_distillation(recorder)
    trainer.train()

    assert len(recorder.steps) == 2
    for step in recorder.steps:
        for part in (
            "generation",
            "sampling",
            "rewards",
            "diversity_reward",
            "teacher_forward",
            "teacher_contexts",
            "teacher_completions",
            "loss_forward",
            "student_forward",
            "distill_forward",
            "backward",
            "distill_backward",
            "student_backward",
            "gather",
            *step_time.BRANCH_PARTS,
        ):
            assert step[part] > 0, part
        assert step["sampling"] <= step["generation"]
        assert step["diversity_reward"] <= step["rewards"]
        assert step["teacher_contexts"] + step["teacher_completions"] + step["teacher_rest"] == pytest.approx(
            step["teacher_forward"]
        )
        assert step["teacher_rest"] >= 0
        assert step["student_forward"] + step["distill_forward"] <= step["loss_forward"]
        assert step["distill_backward"] < step["backward"]
        assert step["generation"] + step["teacher_forward"] + step["loss_forward"] + step["backward"] < step["total"]
    # The branches alone ran on the teacher and left its guidance as it was.
    assert trainer.cfg_teacher.spec.context_negatives
