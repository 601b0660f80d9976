"""Edges of the command line, through the real console script: what a user in a shell or a scheduler sees (exit
status, stderr, the files left behind), not what a Python caller of `cli.main` sees.

The console script's `sys.path` starts with its own folder, not the working directory (unlike `python -m`), and it
prints what the libraries it imports print: both are only visible from a real `trl-diversity` process.
"""

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from documentation import guide, section
from tiny_training import tiny_train_argv

SCRIPT = Path(sys.executable).parent / "trl-diversity"
pytestmark = pytest.mark.skipif(not SCRIPT.is_file(), reason="the trl-diversity console script is not installed")


def tiny_training(model: str, output_dir) -> list[str]:
    """`train` flags for one quick step of a tiny model."""
    return ["train", *tiny_train_argv(model, output_dir, "--max_completion_length", "4")]


def run(*args, cwd=None, umask=None, timeout=120, **env):
    return subprocess.run(
        [str(SCRIPT), *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **env},
        timeout=timeout,
        preexec_fn=None if umask is None else (lambda: os.umask(umask)),
    )


def assert_one_line_error(result, *expected: str) -> str:
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith("trl-diversity train: error: "), lines[0]
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


# ---------------------------------------------------------------------------------------------------------------------
# A group reward named module:function


RANK_BY_LENGTH = """
def rank_by_length(prompt, completions, **kwargs):
    texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    return [order.index(i) / (len(texts) - 1) for i in range(len(texts))]
"""


@pytest.mark.slow
def test_a_group_reward_module_in_the_working_directory_trains(tiny_checkpoint, tmp_path):
    (tmp_path / "my_rewards.py").write_text(RANK_BY_LENGTH)
    result = run(
        *tiny_training(tiny_checkpoint, tmp_path / "out"),
        "--diversity_reward",
        "my_rewards:rank_by_length",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "'diversity/reward/mean'" in result.stdout
    assert (tmp_path / "out" / "adapter_config.json").is_file()


BROKEN_MODULES = {
    "missing module": ("", "no_such_module:f", ["cannot import module 'no_such_module'", "working directory"]),
    "missing attribute": (RANK_BY_LENGTH, "my_rewards:rank_by_size", ["has no attribute 'rank_by_size'"]),
    "error on import": ("raise RuntimeError('no judge configured')\n", "my_rewards:f", ["RuntimeError", "judge"]),
    "syntax error": ("def f(:\n", "my_rewards:f", ["SyntaxError", "my_rewards.py", "line 1"]),
    "missing dependency": ("import judge_package_not_installed\n", "my_rewards:f", ["judge_package_not_installed"]),
}


@pytest.mark.parametrize("case", list(BROKEN_MODULES))
def test_a_group_reward_that_cannot_be_imported_is_one_line_before_anything_loads(case, tiny_checkpoint, tmp_path):
    source, spec, expected = BROKEN_MODULES[case]
    (tmp_path / "my_rewards.py").write_text(source)
    start = time.perf_counter()
    # Checked with the cheap argument checks, before torch, the dataset or the model.
    result = run(*tiny_training(tiny_checkpoint, tmp_path / "out"), "--diversity_reward", spec, cwd=tmp_path)
    assert_one_line_error(result, f"--diversity_reward {spec!r}", *expected)
    assert result.stdout == ""  # no dataset map, no model load, no progress bar
    assert time.perf_counter() - start < 60
    assert not (tmp_path / "out").exists()


def test_evaluate_finds_a_reward_module_in_the_working_directory(tmp_path, monkeypatch):
    from trl_diversity.cli.commands import _check_reward

    (tmp_path / "my_scores.py").write_text(
        "def score(prompts, completions, **kwargs):\n    return [0.0] * len(prompts)\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path))])
    _check_reward("my_scores:score")  # the console script's sys.path lacks the working directory


# ---------------------------------------------------------------------------------------------------------------------
# Interrupted runs


@pytest.mark.slow
@pytest.mark.parametrize(("signal_number", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupted_run_saves_a_checkpoint_and_exits_with_the_signal_status(
    tiny_checkpoint, tmp_path, signal_number, status
):
    out = tmp_path / "run"
    command = tiny_training(tiny_checkpoint, out)
    command[command.index("--max_steps") + 1] = "2000"
    process = subprocess.Popen(
        [str(SCRIPT), *command, "--save_steps", "100000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    output = []
    for line in process.stdout:  # wait until training steps are being logged
        output.append(line)
        if "'loss'" in line:
            break
    process.send_signal(signal_number)
    rest, _ = process.communicate(timeout=120)
    output = "".join(output) + rest
    assert process.returncode == status, output[-3000:]
    assert "Interrupted at step" in rest and f"exit status {status}" in rest
    assert any(out.glob("checkpoint-*")), "no checkpoint was saved on the signal"
    assert not (out / "adapter_config.json").exists()  # the final model is only saved by a finished run


# ---------------------------------------------------------------------------------------------------------------------
# bf16 without a GPU


no_gpu = pytest.mark.skipif(
    subprocess.run([sys.executable, "-c", "import torch; assert not torch.cuda.is_available()"]).returncode != 0,
    reason="bf16 is refused only on a machine without a GPU",
)


@no_gpu
@pytest.mark.parametrize("flags", [["--bf16", "true"], ["--bf16", "true", "--use_cpu", "true"]])
def test_bf16_on_a_cpu_is_refused_before_anything_loads(tmp_path, flags):
    result = run("train", *flags, "--output_dir", tmp_path / "out", cwd=tmp_path)
    line = assert_one_line_error(result, "--bf16", "no GPU")
    assert "--bf16 false" in line  # the fix, which also overrides a recipe's `bf16: true`
    assert result.stdout == ""


@no_gpu
def test_a_recipe_asking_for_bf16_is_refused_on_a_cpu(tmp_path):
    (tmp_path / "gpu.yaml").write_text("bf16: true\nmax_steps: 1\n")
    assert_one_line_error(run("train", "gpu.yaml", "--output_dir", tmp_path / "out", cwd=tmp_path), "--bf16")


@no_gpu
def test_use_cpu_alone_trains_in_float32(tmp_path):
    from trl_diversity.cli.train import parse

    _, training_args, _ = parse(["--use_cpu", "true", "--output_dir", str(tmp_path / "out")])
    assert training_args.use_cpu and not training_args.bf16  # GRPO's default would be bf16, at ~8x the step time


@no_gpu
def test_the_python_api_refuses_bf16_on_a_cpu_as_the_readme_says(tmp_path):
    from trl_diversity import DiversityCFGConfig

    with pytest.raises(ValueError, match="bf16"):
        DiversityCFGConfig(output_dir=str(tmp_path), bf16=True)
    training = guide("training.md")
    assert "an explicit `bf16=True` fails on a CPU" in training
    assert "`--bf16 true` on a machine without a GPU" in training


# ---------------------------------------------------------------------------------------------------------------------
# Permissions of what is written


def _modes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): stat.S_IMODE(p.stat().st_mode) for p in [folder, *folder.rglob("*")]}


@pytest.mark.parametrize(("umask", "folder_mode", "file_mode"), [(0o022, 0o755, 0o644), (0o027, 0o750, 0o640)])
def test_a_merged_model_gets_the_permissions_the_umask_allows(
    tiny_checkpoint, tmp_path, umask, folder_mode, file_mode
):
    other = tmp_path / "b"
    shutil.copytree(tiny_checkpoint, other)
    result = run("merge", tiny_checkpoint, other, "--weight", "0.5", "--output", tmp_path / "m", umask=umask)
    assert result.returncode == 0, result.stderr[-3000:]
    modes = _modes(tmp_path / "m")
    assert "model.safetensors" in modes
    expected = {name: folder_mode if (tmp_path / "m" / name).is_dir() else file_mode for name in modes}
    assert {name: oct(mode) for name, mode in modes.items()} == {name: oct(mode) for name, mode in expected.items()}


def test_atomic_writes_follow_the_umask(tmp_path):
    from trl_diversity.atomic import atomic_folder, write_text_atomic

    previous = os.umask(0o027)
    try:
        with atomic_folder(tmp_path / "folder") as staging:
            (staging / "sub").mkdir()
            (staging / "sub" / "weights.bin").write_bytes(b"x")
            os.chmod(staging / "sub" / "weights.bin", 0o600)  # as safetensors writes its files
        write_text_atomic(tmp_path / "folder" / "notes.txt", "x")
    finally:
        os.umask(previous)
    modes = _modes(tmp_path / "folder")
    assert modes == {".": 0o750, "sub": 0o750, "sub/weights.bin": 0o640, "notes.txt": 0o640}


# ---------------------------------------------------------------------------------------------------------------------
# Adapters of the default model


def _fake_default_cache(folder: Path, tiny_checkpoint: str) -> Path:
    """A TRL_DIVERSITY_CACHE whose converted default model is the tiny checkpoint (a machine's own copy)."""
    shutil.copytree(tiny_checkpoint, folder / "smollm2-135m-instruct")
    return folder


@pytest.mark.slow
def test_an_adapter_of_the_default_model_loads_on_another_machine(tiny_checkpoint, tmp_path):
    here = _fake_default_cache(tmp_path / "here-cache", tiny_checkpoint)
    out = tmp_path / "run"
    trained = run(*tiny_training("default", out), "--save_steps", "1", TRL_DIVERSITY_CACHE=str(here))
    assert trained.returncode == 0, trained.stderr[-3000:]
    for folder in (out, out / "checkpoint-1"):
        assert json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] == "default"
    assert (_modes(out)["adapter_model.safetensors"] & 0o044) == (0o644 & ~_current_umask() & 0o044)

    # Elsewhere: the first machine's cache is gone, this one keeps its default model in another folder.
    shutil.rmtree(here)
    there = _fake_default_cache(tmp_path / "there-cache", tiny_checkpoint)
    generated = run(
        "generate",
        "--model",
        out,
        "--num_prompts",
        "1",
        "--num_samples",
        "2",
        "--max_new_tokens",
        "3",
        "--output",
        tmp_path / "g.jsonl",
        TRL_DIVERSITY_CACHE=str(there),
    )
    assert generated.returncode == 0, generated.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "g.jsonl").read_text().splitlines()]
    assert len([r for r in records if "completion" in r]) == 2  # the two samples (after generate's settings line)


def test_an_adapter_recording_another_machines_default_model_path_resolves_to_the_default(tmp_path, monkeypatch):
    from trl_diversity.cli.arguments import check_model
    from trl_diversity.defaults import resolve_model

    monkeypatch.setenv("TRL_DIVERSITY_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache" / "smollm2-135m-instruct").mkdir(parents=True)
    (tmp_path / "cache" / "smollm2-135m-instruct" / "config.json").write_text("{}")
    elsewhere = "/home/someone-else/.cache/trl_diversity/smollm2-135m-instruct"  # written by an older version
    assert resolve_model(elsewhere) == str(tmp_path / "cache" / "smollm2-135m-instruct")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": elsewhere}))
    check_model(str(adapter), "--model")  # not refused as "a base model that does not exist"


def test_the_guide_says_where_the_default_model_is_cached_and_how_to_move_it():
    training = guide("training.md")
    assert "~/.cache/trl_diversity/" in training and "TRL_DIVERSITY_CACHE" in training
    assert '"base_model_name_or_path": "default"' in training


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ---------------------------------------------------------------------------------------------------------------------
# Noise


@pytest.mark.slow
def test_a_training_run_prints_nothing_about_the_libraries_underneath(tiny_checkpoint, tmp_path):
    result = run(*tiny_training(tiny_checkpoint, tmp_path / "out"))
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert "Setting accelerator to CPU" not in output  # DeepSpeed, imported by accelerate when installed
    assert "Warning" not in output, output[-3000:]


def test_plain_trl_with_a_group_reward_prints_no_deprecation_warning(tmp_path):
    code = (
        "import trl_diversity.rewards\n"
        "from trl import GRPOConfig\n"
        f"GRPOConfig(output_dir={str(tmp_path)!r}, use_cpu=True, report_to='none')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "FutureWarning" not in result.stderr and "deprecated" not in result.stderr, result.stderr


def test_the_guide_explains_the_zero_reward_logged_without_quality_rewards():
    metrics = section(guide("method.md"), "## Logged metrics")
    assert "`frac_reward_zero_std`" in metrics and "no quality reward" in metrics
