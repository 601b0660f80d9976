"""Launch a test script on several CPU processes through `accelerate launch` (torchrun underneath, gloo backend)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

ACCELERATE_CONFIGS = Path(__file__).resolve().parent.parent / "recipes" / "accelerate_configs"
MULTI_CPU = ACCELERATE_CONFIGS / "multi_cpu.yaml"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch(*arguments, config: Path = MULTI_CPU, overrides: tuple[str, ...] = (), timeout: int = 600):
    """`accelerate launch --config_file CONFIG [OVERRIDES] ARGUMENTS`, failing with the processes' output.

    By default the project's 2-process CPU config; `overrides` are launcher flags that replace the config's values
    (e.g. `--num_processes 2` on a GPU config)."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), *overrides]
    command += ["--main_process_port", str(free_port()), *arguments]
    # A crash of a child shows every thread's Python stack (and torch's C++ one) in the output the failure prints.
    env = {**os.environ, "PYTHONFAULTHANDLER": "1", "TORCH_SHOW_CPP_STACKTRACES": "1"}
    run = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    return run
