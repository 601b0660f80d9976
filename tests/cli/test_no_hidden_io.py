"""Files others read survive a kill; the default path never reaches for a network."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tiny import build_model, build_tokenizer
from transformers import AutoModelForCausalLM

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


@pytest.mark.slow
def test_a_merge_killed_midway_leaves_the_old_output_whole(tmp_path):
    tokenizer = build_tokenizer()
    for name, seed in (("a", 1), ("b", 2), ("out", 3)):  # "out" stands for the result of an earlier merge
        build_model(len(tokenizer), seed=seed).save_pretrained(tmp_path / name, max_shard_size="50KB")
    old = AutoModelForCausalLM.from_pretrained(tmp_path / "out").state_dict()

    process = subprocess.Popen(
        [
            sys.executable,
            str(SCRIPTS / "slow_merge.py"),
            str(tmp_path / "a"),
            str(tmp_path / "b"),
            str(tmp_path / "out"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout.readline().strip() == "shard written"  # midway: one shard of several is written
    process.kill()
    process.wait(timeout=30)
    still = AutoModelForCausalLM.from_pretrained(tmp_path / "out").state_dict()
    for name, tensor in old.items():
        assert torch.equal(still[name], tensor)

    finished = subprocess.run(
        [
            sys.executable,
            str(SCRIPTS / "slow_merge.py"),
            str(tmp_path / "a"),
            str(tmp_path / "b"),
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "merge done" in finished.stdout, finished.stderr[-2000:]
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "out").state_dict()
    a = AutoModelForCausalLM.from_pretrained(tmp_path / "a").state_dict()
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "b").state_dict()
    torch.testing.assert_close(merged["lm_head.weight"], 0.5 * a["lm_head.weight"] + 0.5 * b["lm_head.weight"])


@pytest.mark.slow
def test_the_default_path_makes_no_network_attempt(tmp_path):
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
    }
    started = time.time()
    run = subprocess.run(
        [sys.executable, str(SCRIPTS / "no_network.py"), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["attempts"] == [], f"network attempts: {result['attempts']}"
    assert time.time() - started < 600
