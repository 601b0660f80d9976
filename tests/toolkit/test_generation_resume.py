"""`trl-diversity generate` writes a batch of prompts' groups at a time and resumes an interrupted run to the file an
uninterrupted run writes; a run samples as the toolkit always has (one seed per run, the batches in order)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import trl_diversity.toolkit.generation as generation
from trl_diversity import cli
from trl_diversity.data import load_prompts
from trl_diversity.toolkit.generation import (
    Sampling,
    generate_records,
    partial_path,
    read_generations,
    render_prompt,
    unconditional_ids,
    write_generations,
)

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
    marker = json.loads(partial_path(output).read_text().splitlines()[-1])  # ... and the generator state after it
    assert marker["after_batch"] == 0 and set(marker["rng_state"]) >= {"cpu"}
    assert "2 of 5 prompts are in" in capsys.readouterr().out

    sampled = _count_batches(monkeypatch)
    cli.main(_command(tiny_checkpoint, prompts_file, output))
    assert "Resuming" in capsys.readouterr().out and len(sampled) == 2  # batches 2 and 3 of 3
    assert not partial_path(output).exists()
    assert _without_timing(output) == _without_timing(tmp_path / "whole.jsonl")
    header = read_generations(output)[0][0]
    assert all("rng_state" not in json.loads(line) for line in output.read_text().splitlines())
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
    root = str(Path(__file__).parents[2])  # this checkout's package, whatever the installed one
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
    with pytest.raises(SystemExit) as refused:
        cli.main(_command(tiny_checkpoint, prompts_file, output, "--seed", "4"))
    message = capsys.readouterr().err
    assert refused.value.code == 2 and "seed: 3 there, 4 here" in message
    assert len(read_generations(partial_path(output))[1]) == 2 * 3  # the .partial is left as it was


@torch.no_grad()
def _sampled_as_before(
    model, tokenizer, prompts, num_samples, max_new_tokens, guidance_scale, seed, prompts_per_batch
):
    """The completions the toolkit sampled before resumable files (its `generate_records` then, the sampling part):
    `torch.manual_seed(seed)` once, then one `model.generate` per batch of prompts, in order."""
    torch.manual_seed(seed)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    null_ids = unconditional_ids(tokenizer, "", True) if guidance_scale != 1.0 else None
    completions = []
    for start in range(0, len(prompts), prompts_per_batch):
        rows = [
            render_prompt(tokenizer, p, True)
            for p in prompts[start : start + prompts_per_batch]
            for _ in range(num_samples)
        ]
        width = max(len(r) for r in rows)
        ids = torch.tensor([[pad_id] * (width - len(r)) + r for r in rows])  # left padding
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        kwargs = {}
        if null_ids is not None:
            kwargs = {"guidance_scale": guidance_scale, "negative_prompt_ids": torch.tensor([null_ids] * len(rows))}
        output = model.generate(
            input_ids=ids,
            attention_mask=mask,
            do_sample=True,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            max_new_tokens=max_new_tokens,
            pad_token_id=pad_id,
            **kwargs,
        )
        eos_ids = {tokenizer.eos_token_id, *[model.generation_config.eos_token_id]} - {None}
        for row in output[:, width:].tolist():
            cut = next((i for i, token in enumerate(row) if token in eos_ids), len(row))
            completions.append(row[:cut])
    return completions


@pytest.mark.parametrize("guidance_scale", [1.0, 2.0])
def test_a_run_of_several_batches_samples_as_one_run_wide_seed_did(
    tiny_checkpoint, tmp_path, monkeypatch, guidance_scale
):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint)
    settings = dict(num_samples=2, max_new_tokens=6, guidance_scale=guidance_scale, seed=5, prompts_per_batch=2)
    before = _sampled_as_before(model, tokenizer, PROMPTS, **settings)
    assert len(before) == 5 * 2 and before[4:] != _sampled_as_before(model, tokenizer, PROMPTS[2:], **settings)[:6]

    records = generate_records(model, tokenizer, PROMPTS, progress=False, **settings)
    assert [r["completion_ids"] for r in records] == before
    # ... and so does a file written by a run interrupted after its first batch and resumed
    output, sampling = tmp_path / "resumed.jsonl", Sampling(**settings)
    with monkeypatch.context() as patch:
        _count_batches(patch, stop_after=1)
        with pytest.raises(KeyboardInterrupt):
            write_generations(output, PROMPTS, lambda: (model, tokenizer), sampling, "m", progress=False, log=str)
    torch.manual_seed(123)  # whatever the generator did in between
    write_generations(output, PROMPTS, lambda: (model, tokenizer), sampling, "m", progress=False, log=str)
    assert [r["completion_ids"] for r in read_generations(output)[1]] == before
