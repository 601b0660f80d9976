"""`python -m benchmarks.serving`'s machinery: a measurement runs in a fresh process with its own thread settings and is
cached under its spec the moment it finishes, so an interrupted run resumes; `--redo` measures again. The benchmark's
own measurements need vLLM and ~25 min, so they are run by hand (`benchmarks/results/serving*.md`); here a transformers
measurement of the tiny checkpoint goes through the same path."""

import json
import subprocess
from types import SimpleNamespace

import pytest

from benchmarks.serving import measurement
from benchmarks.serving.dial import compare_greedy


def tiny_spec(checkpoint: str) -> dict:
    return dict(
        engine="transformers",
        model=checkpoint,
        scale=3.0,
        threads=1,
        batch="all",
        prompts="open",
        num_prompts=2,
        k=2,
        max_tokens=4,
        force_length=True,
        warmup=False,
    )


@pytest.fixture
def cache_in(tmp_path, monkeypatch):
    monkeypatch.setattr(measurement, "CACHE", tmp_path / "serving_cache.json")
    monkeypatch.setattr(measurement, "WORK", tmp_path / "work")
    return tmp_path / "serving_cache.json"


@pytest.mark.slow
def test_a_measurement_runs_in_a_fresh_process_and_is_cached_under_its_spec(tiny_checkpoint, cache_in, monkeypatch):
    spec = tiny_spec(tiny_checkpoint)
    args = SimpleNamespace(redo=[], wait_for=[], timeout=300)
    result = measurement.measure(spec, args, "tiny")
    # 2 prompts x 2 samples x 4 forced tokens, sampled with CFG in a process at the spec's one thread.
    assert result["tokens"] == 16 and result["torch_threads"] == 1
    assert result["spec"] == spec and result["tokens_per_s"] == pytest.approx(16 / result["seconds"])
    cached = json.loads(cache_in.read_text())
    assert list(cached) == [measurement.spec_key(spec)]

    def no_process(*_args, **_kwargs):
        raise AssertionError("a cached spec must not be measured again")

    monkeypatch.setattr(subprocess, "run", no_process)
    assert measurement.measure(spec, args, "tiny") == result
    # --redo KEY_SUBSTRING measures a matching spec again.
    with pytest.raises(AssertionError, match="measured again"):
        measurement.measure(spec, SimpleNamespace(redo=['"max_tokens": 4'], wait_for=[], timeout=300), "tiny")


@pytest.mark.slow
def test_a_failed_measurement_says_which_spec_and_caches_nothing(tiny_checkpoint, cache_in, tmp_path):
    spec = {**tiny_spec(tiny_checkpoint), "model": str(tmp_path / "no-such-model")}
    with pytest.raises(RuntimeError, match="measurement failed .*no-such-model"):
        measurement.measure(spec, SimpleNamespace(redo=[], wait_for=[], timeout=300), "missing model")
    assert not cache_in.exists()


@pytest.mark.parametrize(
    "spec, expected, absent",
    [
        ({"engine": "transformers", "threads": 2}, {"OMP_NUM_THREADS": "2"}, ["VLLM_CPU_OMP_THREADS_BIND"]),
        ({"engine": "vllm", "threads": 1}, {"VLLM_CPU_OMP_THREADS_BIND": "0"}, ["OMP_NUM_THREADS"]),
        ({"engine": "vllm", "threads": 2}, {"VLLM_CPU_OMP_THREADS_BIND": "0-1"}, ["OMP_NUM_THREADS"]),
        (
            {"engine": "vllm", "threads": 2, "engine_core": "inline"},
            {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "OMP_NUM_THREADS": "2"},
            ["VLLM_CPU_OMP_THREADS_BIND"],
        ),
    ],
)
def test_a_measurement_starts_with_its_own_thread_settings_and_nothing_inherited(spec, expected, absent, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "3")
    env = measurement.worker_env(spec)
    assert {k: env[k] for k in expected} == expected
    assert not any(k in env for k in absent)
    assert env["HF_HUB_OFFLINE"] == "1"


def test_greedy_completions_compare_by_identity_prefix_and_the_margin_where_they_part():
    reference = {0: {"tokens": [1, 2, 3], "margins": [5.0, 0.01, 2.0]}, 1: {"tokens": [4, 5], "margins": [1.0, 1.0]}}
    served = {0: [1, 9, 3], 1: [4, 5, 0]}  # prompt 0 parts at its second token, prompt 1 only by a stop token
    result = compare_greedy(served, reference, stops={0})
    assert result["identical"] == 1 and result["prompts"] == 2
    assert result["matching_prefix_share"] == pytest.approx((1 + 2) / (3 + 2))
    assert result["first_difference_margins"] == [0.01]
