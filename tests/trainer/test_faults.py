"""Numerical faults and interruptions: no corrupted weights, no lost work."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from tiny_training import logged, make_trainer


def _poison_steps(trainer, steps):
    """Make the loss NaN on the given (1-based) optimizer steps, as a diverging reward or overflow would."""
    original = trainer._compute_loss

    def compute_loss(model, inputs):
        loss = original(model, inputs)
        return loss * float("nan") if trainer.state.global_step + 1 in steps else loss

    trainer._compute_loss = compute_loss


def test_a_non_finite_step_is_skipped_and_logged(tiny_checkpoint, tmp_path):
    trainer = make_trainer(tiny_checkpoint, tmp_path, max_steps=4)
    _poison_steps(trainer, {2})
    trainer.train()
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert logged(trainer, "nonfinite_steps_skipped") == [0.0, 1.0, 0.0, 0.0]
    assert trainer.state.global_step == 4


def test_a_run_of_non_finite_steps_stops_without_saving(tiny_checkpoint, tmp_path):
    trainer = make_trainer(tiny_checkpoint, tmp_path, max_steps=6, max_nonfinite_steps=2)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    _poison_steps(trainer, {1, 2, 3})
    with pytest.raises(FloatingPointError, match="2 optimizer steps in a row had non-finite gradients"):
        trainer.train()
    for name, param in trainer.model.named_parameters():
        assert torch.equal(param, before[name])  # both poisoned steps were skipped
    assert not (tmp_path / "out" / "model.safetensors").exists()


@pytest.mark.slow
@pytest.mark.parametrize("signal_number", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_saves_a_checkpoint_that_resumes(tiny_checkpoint, tmp_path, signal_number):
    out = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "trl_diversity.cli",
        "train",
        "--model_name_or_path",
        tiny_checkpoint,
        "--output_dir",
        str(out),
        "--max_steps",
        "2000",
        "--save_steps",
        "100000",
        "--logging_steps",
        "1",
        "--per_device_train_batch_size",
        "4",
        "--max_completion_length",
        "6",
        "--report_prompts",
        "0",
        "--lora_target_modules",
        "q_proj",
        "v_proj",
    ]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    output = []
    deadline = time.time() + 240
    for line in process.stdout:  # wait until training steps are being logged
        output.append(line)
        if "'loss'" in line or time.time() > deadline:
            break
    process.send_signal(signal_number)
    rest, _ = process.communicate(timeout=240)
    output.append(rest)
    assert process.returncode == 128 + signal_number, "".join(output)[-3000:]  # 130 for SIGINT, 143 for SIGTERM
    assert "Interrupted at step" in rest
    checkpoints = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert checkpoints, "no checkpoint was saved on the signal"
    step = int(checkpoints[-1].name.split("-")[1])
    assert 0 < step < 2000

    resumed = subprocess.run(
        [
            *command[: command.index("--max_steps")],
            "--max_steps",
            str(step + 2),
            *command[command.index("--save_steps") :],
            "--resume_from_checkpoint",
            "true",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (out / "adapter_config.json").is_file()
    assert "Interrupted" not in resumed.stdout


def test_empty_or_identical_completions_get_finite_zero_diversity(tiny_checkpoint, tmp_path):
    from trl_diversity.rewards import group_advantages

    trainer = make_trainer(tiny_checkpoint, tmp_path)
    for group in (["", "", "", ""], ["the same words"] * 4):
        rewards = torch.tensor(trainer.diversity_reward(prompts=["p", "q"], completions=[group, group])).flatten()
        assert torch.isfinite(rewards).all()
        assert rewards.abs().max() < 1e-5  # identical samples: zero diversity, not NaN
        assert torch.isfinite(group_advantages(rewards, 4, pairwise=True)).all()
