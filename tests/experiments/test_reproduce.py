"""`python -m experiments.reproduce --budget small`: every stage runs on the real default model and every file is written;
a rerun computes nothing and rebuilds the report from the cache."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_small_budget_runs_every_stage_and_resumes(tmp_path):
    results, checkpoints = tmp_path / "results", tmp_path / "checkpoints"
    command = [sys.executable, "-m", "experiments.reproduce", "--budget", "small"]
    command += ["--results", str(results), "--checkpoints", str(checkpoints)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    first = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=1800)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "min left" in first.stdout  # progress with an estimate of the time left
    points = sorted(p.name.split("-")[0] for p in (results / "points").glob("*.json"))
    # CFG 1 and T=1 are the same sampler on the same model: evaluated once, listed in both families
    assert points == ["base", "cfg", "lerp", "lerp", "lerp", "temperature"]
    for name in ("reproduction.md", "reproduction_fronts.png", "reproduction_training.png", "summary.json"):
        assert (results / name).stat().st_size > 0, name
    assert len(list((results / "training").glob("*.json"))) == 2
    report = (results / "reproduction.md").read_text()
    for section in ("## Claims", "## Every point", "## Paired comparisons", "## Fronts at matched adherence"):
        assert section in report
    summary = json.loads((results / "summary.json").read_text())
    verdicts = ("holds", "partly", "does not hold", "not testable")
    assert [row["verdict"].startswith(verdicts) for row in summary["claims"]] == [True] * 3
    entry = json.loads(next((results / "points").glob("lerp-0.5-*.json")).read_text())
    assert len(entry["per_prompt"]["partitions"]) == 3  # per-prompt values are kept for paired comparisons
    assert len(entry["per_prompt"]["base_lm_diversity"]) == 3  # the second embedding space, held out
    assert [len(texts) for texts in entry["completions"]] == [3, 3, 3]  # kept, so a later judge needs no sampling

    # Everything is cached: a rerun trains and generates nothing, and --report_only needs no model.
    stamps = {p: p.stat().st_mtime for p in (results / "points").glob("*.json")}
    second = subprocess.run(
        command + ["--report_only"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300
    )
    assert second.returncode == 0, second.stderr[-3000:]
    assert {p: p.stat().st_mtime for p in (results / "points").glob("*.json")} == stamps
    assert "finetune" not in second.stdout

    # Another diversity model: only its finetune and its LERP points are new; the base points and the quality
    # model's point (w = 0) are reused.
    kept = [*(results / "training").glob("*.json"), *checkpoints.glob("quality-*/adapter_model.safetensors")]
    kept += [results / "summary.json", results / "reproduction.md"]
    kept_stamps = {p: p.stat().st_mtime for p in kept}
    third = subprocess.run(
        command + ["--diversity_coef", "30"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=1800
    )
    assert third.returncode == 0, third.stderr[-3000:]
    assert {p: p.stat().st_mtime for p in kept} == kept_stamps  # the quality model and the first report untouched
    assert len(list((results / "training").glob("*.json"))) == 3  # one new finetune
    after = {p: p.stat().st_mtime for p in (results / "points").glob("*.json")}
    assert {p: t for p, t in after.items() if p in stamps} == stamps
    assert sorted(p.name.split("-")[0] for p in set(after) - set(stamps)) == ["lerp", "lerp"]
    assert (results / "reproduction_beta30.md").is_file() and (results / "summary_beta30.json").is_file()
    assert "--diversity_coef 30" in (results / "reproduction_beta30.md").read_text()

    # A diversity target: one more finetune of the same experiment, its controller's coefficient in its log.
    fourth = subprocess.run(
        command + ["--diversity_target", "initial"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=1800
    )
    assert fourth.returncode == 0, fourth.stderr[-3000:]
    assert len(list((results / "training").glob("*.json"))) == 4
    logs = [json.loads(p.read_text()) for p in (results / "training").glob("diversity-*.json")]
    target_log = next(log for log in logs if log["finetune"].get("diversity_target") == "initial")
    assert [row["diversity/coef"] for row in target_log["log_history"] if "diversity/coef" in row] == [15.0, 15.0]
    assert (results / "reproduction_target-initial.md").is_file()
    assert "--diversity_target initial" in (results / "reproduction_target-initial.md").read_text()

    # A second seed's endpoints only: both finetunes are trained and judged at w = 0 and w = 1, no merge is made,
    # the base model's points are reused, and no report is written (it needs the LERP front).
    before = {p: p.stat().st_mtime for p in (results / "points").glob("*.json")}
    fifth = subprocess.run(
        command + ["--seed", "1", "--endpoints_only"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=1800
    )
    assert fifth.returncode == 0, fifth.stderr[-3000:]
    assert len(list((results / "training").glob("*.json"))) == 6
    after = {p: p.stat().st_mtime for p in (results / "points").glob("*.json")}
    assert {p: t for p, t in after.items() if p in before} == before
    assert sorted(p.name.rsplit("-", 1)[0] for p in set(after) - set(before)) == ["lerp-0", "lerp-1"]
    assert not (results / "reproduction_seed1.md").exists() and "experiments.compare_finetunes" in fifth.stdout

    # The levers at once, judged on the open questions: the quality x diversity reward, a faster controller, and
    # only the finetunes' own points on the other prompt set (no base point, no report).
    before = {p: p.stat().st_mtime for p in (results / "points").glob("*.json")}
    levers = ["--diversity_quality", "teacher_likelihood", "--diversity_target", "initial"]
    levers += ["--diversity_target_rate", "0.5", "--finetunes_only", "--eval_prompts", "open"]
    sixth = subprocess.run(command + levers, capture_output=True, text=True, env=env, cwd=ROOT, timeout=1800)
    assert sixth.returncode == 0, sixth.stderr[-3000:]
    logs = [json.loads(p.read_text()) for p in (results / "training").glob("diversity-*.json")]
    lever_log = next(log for log in logs if log["finetune"].get("diversity_quality") == "teacher_likelihood")
    assert lever_log["finetune"]["diversity_target_rate"] == 0.5
    assert any("diversity/teacher_likelihood" in row for row in lever_log["log_history"])
    after = {p: p.stat().st_mtime for p in (results / "points").glob("*.json")}
    assert {p: t for p, t in after.items() if p in before} == before
    new = sorted(set(after) - set(before))
    assert sorted(p.name.rsplit("-", 1)[0] for p in new) == ["lerp-0", "lerp-1"]  # w = 0 is new too: new prompts
    from dataclasses import replace

    from experiments.runs import BUDGETS, Point, Variant, point_file_stem, point_key

    variant = Variant(diversity_target="initial", diversity_quality="teacher_likelihood", diversity_target_rate=0.5)
    budget = replace(variant.apply(BUDGETS["small"]), eval_prompts="open")
    assert budget.prompts()[0] == "Name a fruit that is red."  # the open questions, not the eval prompts
    ends = [Point("lerp", w) for w in (0.0, 1.0)]
    assert {p.name for p in new} == {
        f"{point_file_stem(p)}-{point_key(p, budget, budget.prompts())}.json" for p in ends
    }
    assert not list(results.glob("reproduction_*quality*"))  # no report for another prompt set
    refused = subprocess.run(command + ["--eval_prompts", "open"], capture_output=True, text=True, env=env, cwd=ROOT)
    assert refused.returncode == 2 and "add --finetunes_only" in refused.stderr


@pytest.mark.slow
def test_compare_finetunes_reads_the_committed_cache_without_a_model(tmp_path):
    """The diversity models' comparison is rebuilt from the committed full-budget cache alone, paired by prompt."""
    results = ROOT / "experiments" / "results" / "reproduction-full"
    command = [sys.executable, "-m", "experiments.compare_finetunes", "--diversity_models"]
    command += ["--out", str(tmp_path / "models.md"), "--results", str(results), "--summary", str(tmp_path / "s.json")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRL_DIVERSITY_CACHE": str(tmp_path / "no-model-here")}
    run = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    text = (tmp_path / "models.md").read_text()
    # The beta = 15 row is the one docs/results/reproduction.md reports: +7.8% MiniLM diversity, -1.3% adherence,
    # each with its relative CI (claim (b) is judged on the CIs' lower ends).
    assert "| beta = 15 (vs beta = 0, seed 0) | +7.8% [+2.9%, +12.9%] (+0.033 [+0.012, +0.054]) | -1.3% [-3.4%" in text
    assert "## Goals" in text and "| (b) +20% MiniLM diversity" in text
    assert (tmp_path / "s.json").read_text() == (results / "diversity_models.json").read_text()  # the same numbers
    assert (tmp_path / "models_training.png").stat().st_size > 0
    assert not (tmp_path / "no-model-here").exists()  # no model was converted or loaded


def test_a_retrained_finetune_keeps_its_first_log_and_records_the_retrain():
    """A finetune retrained for merges (its checkpoint gone) keeps the log its cached points came from; the retrain's
    compute is recorded, with whether it reproduced the first curve (the wall-clock entries aside)."""
    from experiments.reproduce import record_retrain

    def log(loss: float, seconds: float) -> dict:
        rows = [{"loss": loss, "step_time": seconds / 2, "step": 1}, {"train_runtime": seconds, "step": 2}]
        return {"finetune": {"name": "quality"}, "log_history": rows}

    kept = record_retrain(log(1.5, 100.0), log(1.5, 140.0), for_run="--budget full --diversity_target initial")
    assert kept["log_history"] == log(1.5, 100.0)["log_history"]
    assert kept["retrains"] == [
        {
            "train_runtime": 140.0,
            "same_curve_as_first": True,
            "resumed": False,
            "for_run": "--budget full --diversity_target initial",
            "max_relative_difference": 0.0,
            "log_history": log(1.5, 140.0)["log_history"],
        }
    ]
    again = record_retrain(kept, log(1.25, 90.0), resumed=True)["retrains"][-1]
    assert again["same_curve_as_first"] is False and again["resumed"] is True and again["train_runtime"] == 90.0
    assert again["max_relative_difference"] == 0.25 / 1.5  # the loss; the wall-clock step_time is not compared


def test_the_compute_table_lists_every_training_run_retrains_included(tmp_path):
    """Every finetune's run and each retrain is a row; a resumed retrain's partial time is left blank, not counted."""
    from experiments.compare_finetunes import compute_table

    (tmp_path / "training").mkdir()
    for name, seed, runtime, retrains in (
        (
            "quality",
            10,
            600.0,
            [{"train_runtime": 660.0, "same_curve_as_first": False, "max_relative_difference": 2e-7}],
        ),
        ("diversity", 2, 1200.0, [{"train_runtime": None, "same_curve_as_first": False}]),
        ("quality", 2, 300.0, [{"train_runtime": 5.0, "same_curve_as_first": True, "resumed": True}]),
    ):
        finetune = {
            "name": name,
            "diversity_coef": 15.0 if name == "diversity" else 0.0,
            "seed": seed,
            "max_steps": 60,
        }
        log = {"finetune": finetune, "log_history": [{"train_runtime": runtime}], "retrains": retrains}
        (tmp_path / "training" / f"{name}-{seed}.json").write_text(json.dumps(log))
    rows = [line for line in compute_table(tmp_path) if line.startswith("| ") and "---" not in line][1:]
    assert rows == [
        "| diversity | grpo | 15 |  |  | 2 | 60 | 20.0 | 20.0 |",
        "| diversity again, for merges (a curve not bit-identical; no curve kept, so how close it came cannot be "
        "checked) | grpo | 15 |  |  | 2 | 60 |  |  |",
        "| quality | grpo | 0 |  |  | 2 | 60 | 5.0 | 5.0 |",
        "| quality again, for merges (bit-identical curve) | grpo | 0 |  |  | 2 | 60 |  |  |",
        "| quality | grpo | 0 |  |  | 10 | 60 | 10.0 | 10.0 |",
        "| quality again, for merges (its curve within 2e-07 relative) | grpo | 0 |  |  | 10 | 60 | 11.0 | 11.0 |",
    ]
    assert compute_table(tmp_path)[-1] == "6 training runs, 46 min of training in all."


def test_the_report_says_when_the_merges_come_from_a_retrained_finetune():
    from experiments.reproduction_report import retrain_notes

    run = "--budget full --diversity_target initial"
    assert retrain_notes({"quality": {"log_history": []}}, run) == []  # trained once: nothing to say
    logs = {
        "quality": {"retrains": [{"train_runtime": 1066.0, "same_curve_as_first": False, "for_run": run}]},
        "diversity": {
            "retrains": [
                {
                    "train_runtime": 1500.0,
                    "same_curve_as_first": False,
                    "max_relative_difference": 3e-7,
                    "for_run": run,
                }
            ]
        },
    }
    notes = retrain_notes(logs, run)
    assert "The quality model was trained again" in notes[1] and "18 min" in notes[1]
    assert "that curve was not kept, so how close the two runs came cannot be checked" in notes[1]
    assert "within a relative 3.0e-07 of the first run's" in notes[2]
    # Another run's report (the beta = 50 one shares the quality model) has no point from those retrains.
    assert retrain_notes(logs, "--budget full --diversity_coef 50") == []
