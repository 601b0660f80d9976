import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trl_diversity import group_diversity_rewards
from trl_diversity.embedder import embed, load_embedder

SCRIPT = Path(__file__).parent / "scripts" / "two_process_train.py"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_two_processes_compute_the_same_diversity_rewards_as_one(tiny_checkpoint, tmp_path):
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(free_port()),
        str(SCRIPT),
        tiny_checkpoint,
        str(tmp_path),
    ]
    run = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["num_processes"] == 2
    completions, logged = result["completions"], torch.tensor(result["diversity"])
    assert len(completions) == 4  # one group of 4, split 2 + 2 across the processes

    expected = group_diversity_rewards(embed(load_embedder(None), completions), 4)
    torch.testing.assert_close(logged, expected, atol=1e-4, rtol=1e-4)
    assert all("loss" in entry for entry in result["log_history"][:2])
    assert (tmp_path / "model.safetensors").is_file()
