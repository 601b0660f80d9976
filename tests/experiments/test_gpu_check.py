"""The prepared GPU check (benchmarks/gpu_check.py), end to end in its dry-run mode: CPU, tiny models."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"
SECTIONS = [
    "environment",
    "assets",
    "kernel",
    "train_full_bf16",
    "train_lora_bf16",
    "step_time_135m",
    "step_time_1.5b",
    "fsdp2",
    "deepspeed_zero2",
    "deepspeed_zero3",
]


@pytest.mark.slow
def test_gpu_check_dry_run_runs_every_section(tmp_path):
    output = tmp_path / "out" / "gpu_check.json"
    command = [sys.executable, str(SCRIPT), "--dry-run", "--work", str(tmp_path / "work"), "--output", str(output)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-5000:] + run.stderr[-3000:]
    report = json.loads(output.read_text())
    sections = report["sections"]
    assert list(sections) == SECTIONS

    try:
        import deepspeed  # noqa: F401

        deepspeed_status = "ok"
    except ImportError:
        deepspeed_status = "skipped"
    for name, section in sections.items():
        expected = deepspeed_status if name.startswith("deepspeed") else "ok"
        assert section["status"] == expected, (name, section.get("error"))
        assert all(check["passed"] for check in section.get("checks", {}).values()), (name, section["checks"])

    kernel = sections["kernel"]
    assert kernel["vocab"] > 32768  # more than one of the kernel's vocabulary tiles
    assert {(run["dtype"], run["kind"]) for run in kernel["runs"]} == {
        (dtype, kind) for dtype in ("bfloat16", "float32") for kind in ("reverse_kl", "forward_kl", "jsd")
    }
    for size in ("135m", "1.5b"):
        timing = sections[f"step_time_{size}"]
        assert timing["grpo"]["steps_measured"] >= 1 and timing["ours"]["steps_measured"] >= 1
        assert timing["ratio_median_step"] > 0
        assert timing["ours"]["median_parts_s"]["teacher_forward"] > 0  # the teacher really ran, and was timed
    for name in ("train_full_bf16", "train_lora_bf16"):
        assert sections[name]["trainable_tensors_moved"] == sections[name]["trainable_tensors"] > 0
    assert sections["assets"]["models"]["1.5b"]["parameters"] > sections["assets"]["models"]["135m"]["parameters"]

    table = output.with_suffix(".md").read_text()
    assert (
        "| kernel | ok |" in table
        and "Step time and peak memory" in table
        and "Chunked kernel vs full logits" in table
    )
