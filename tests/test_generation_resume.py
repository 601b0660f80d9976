"""`trl-diversity generate` writes a batch of prompts' groups at a time and resumes an interrupted run to the file an
uninterrupted run writes."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import trl_diversity.toolkit.generation as generation
from trl_diversity import cli
from trl_diversity.data import load_prompts
from trl_diversity.toolkit.generation import partial_path, read_generations

PROMPTS = list(load_prompts("eval", limit=5)["prompt"])


def _command(model, prompts_file, output, *extra):
    return [
        "generate",
        "--model",
        model,
        "--prompts",
        str(prompts_file),
        "--num_samples",
        "3",
        "--max_new_tokens",
        "8",
        "--prompts_per_batch",
        "2",
        "--seed",
        "3",
        "--output",
        str(output),
        *extra,
    ]


@pytest.fixture
def prompts_file(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("\n".join(PROMPTS) + "\n")
    return path


def _without_timing(path):
    headers, records = read_generations(path)
    return headers, [{k: v for k, v in r.items() if k != "seconds"} for r in records]


def _count_batches(monkeypatch, stop_after: int | None = None) -> list:
    """Count the batches sampled; with `stop_after`, the next one raises KeyboardInterrupt (a Ctrl-C)."""
    started, real = [], generation._generate

    def counted(*args, **kwargs):
        started.append(1)
        if stop_after is not None and len(started) > stop_after:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(generation, "_generate", counted)
    return started


def test_an_interrupted_generate_resumes_to_the_same_file(
    tiny_checkpoint, prompts_file, tmp_path, monkeypatch, capsys
):
    cli.main(_command(tiny_checkpoint, prompts_file, tmp_path / "whole.jsonl"))
    output = tmp_path / "resumed.jsonl"
    with monkeypatch.context() as patch:
        _count_batches(patch, stop_after=1)
        with pytest.raises(SystemExit) as stopped:
            cli.main(_command(tiny_checkpoint, prompts_file, output))
    assert stopped.value.code == 130 and not output.exists()
    headers, records = read_generations(partial_path(output))
    assert len(headers) == 1 and [r["prompt_index"] for r in records] == [0, 0, 0, 1, 1, 1]  # the first batch
    assert "2 of 5 prompts are in" in capsys.readouterr().out

    sampled = _count_batches(monkeypatch)
    cli.main(_command(tiny_checkpoint, prompts_file, output))
    assert "Resuming" in capsys.readouterr().out and len(sampled) == 2  # batches 2 and 3 of 3
    assert not partial_path(output).exists()
    assert _without_timing(output) == _without_timing(tmp_path / "whole.jsonl")
    header = read_generations(output)[0][0]
    assert header["sampling"]["seed"] == 3 and header["generation_config"]["top_k"] == 0

    cli.main(_command(tiny_checkpoint, prompts_file, output))  # complete: nothing is sampled again
    assert "complete" in capsys.readouterr().out and len(sampled) == 2


@pytest.mark.slow
def test_a_killed_generate_resumes_to_the_same_file(tiny_checkpoint, tmp_path):
    """SIGKILL (no handler runs) once the first batch is on disk, a torn line after it; then resume."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(load_prompts("eval", limit=40)["prompt"]) + "\n")
    output, partial = tmp_path / "killed.jsonl", partial_path(tmp_path / "killed.jsonl")
    command = _command(tiny_checkpoint, prompts, output, "--max_new_tokens", "48", "--prompts_per_batch", "1")
    root = str(Path(__file__).parents[1])  # this checkout's package, whatever the installed one
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    process = subprocess.Popen(
        [sys.executable, "-m", "trl_diversity.cli", *command], env=environment, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 120
        while not (partial.exists() and partial.read_text().count("\n") > 3) and process.poll() is None:
            assert time.monotonic() < deadline, "the first group never reached the disk"
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    assert not output.exists(), "the run finished before it was killed; give it more prompts"
    with partial.open("a") as f:
        f.write('{"model": "torn')  # a write the kill cut short
    cli.main(command)
    cli.main(
        _command(
            tiny_checkpoint, prompts, tmp_path / "whole.jsonl", "--max_new_tokens", "48", "--prompts_per_batch", "1"
        )
    )
    assert _without_timing(output) == _without_timing(tmp_path / "whole.jsonl")
    assert len(read_generations(output)[1]) == 40 * 3


def test_resuming_with_other_settings_is_refused(tiny_checkpoint, prompts_file, tmp_path, monkeypatch, capsys):
    output = tmp_path / "a.jsonl"
    with monkeypatch.context() as patch:
        _count_batches(patch, stop_after=1)
        with pytest.raises(SystemExit):
            cli.main(_command(tiny_checkpoint, prompts_file, output))
    capsys.readouterr()
    with pytest.raises(SystemExit) as refused:
        cli.main(_command(tiny_checkpoint, prompts_file, output, "--temperature", "0.7"))
    message = capsys.readouterr().err
    assert refused.value.code == 2 and message.count("\n") == 1
    assert "temperature: 1.0 there, 0.7 here" in message and f"delete {partial_path(output)}" in message


def test_a_prompts_group_does_not_depend_on_where_the_run_started(tiny_checkpoint):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_diversity.toolkit.generation import Sampling, generate_batches

    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint)
    sampling = Sampling(num_samples=2, max_new_tokens=6, prompts_per_batch=2)
    whole = [b for b in generate_batches(model, tokenizer, PROMPTS, sampling, progress=False)]
    late = [b for b in generate_batches(model, tokenizer, PROMPTS, sampling, first_batch=2, progress=False)]
    strip = lambda batches: [[r["completion_ids"] for r in b] for b in batches]  # noqa: E731
    assert strip(late) == strip(whole[2:])
    assert strip(whole) != strip(
        generate_batches(model, tokenizer, PROMPTS, Sampling(**{**sampling.__dict__, "seed": 1}), progress=False)
    )
