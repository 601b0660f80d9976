"""Serving on a CPU, measured fairly: a CFG-distilled model in vLLM against its base with CFG in `transformers`, and
the quality-diversity dial served per request as LoRA adapters of one vLLM engine.

Runs in the vLLM environment (`bash scripts/setup_vllm.sh`), from the repository root, on a quiet machine:

    .venv-vllm/bin/python benchmarks/serving.py                    # everything below, resumable (~25 min, 2 cores)
    .venv-vllm/bin/python benchmarks/serving.py --part reconcile   # where the 4.3x and 11.2x figures part
    .venv-vllm/bin/python benchmarks/serving.py --part settled     # the settled figure: 3 repeats, quality alongside
    .venv-vllm/bin/python benchmarks/serving.py --part dial        # the dial served per request, against merged models
    .venv-vllm/bin/python benchmarks/serving.py --part report      # only rewrite the reports from the cache

Every measurement runs in a fresh process (`--worker`), one at a time, and is cached in
`benchmarks/results/serving_cache.json` the moment it finishes, keyed by its settings: an interrupted run resumes where
it stopped, and `--redo KEY_SUBSTRING` measures again what matches. Before each measurement the script waits while
another heavy job named in `--wait_for` runs, and records the load average around it.

The settled method (`serving.md`): each engine in a fresh process of its own, at its own best thread count and batch
shape (both chosen from measured candidates in `serving_reconciliation.md`), the same prompts (20 short open
questions), `k` = 8 samples each, 48 new tokens with the length forced (`ignore_eos` + `min_tokens` in vLLM,
`min_new_tokens` in transformers: equal work, independent of the weights), vLLM's prefix caching on, one warm-up call
first, tokens/s = generated tokens / wall time of the timed call(s); three repeats, alternating engines. Speed does
not depend on the weights, so the base model's architecture in vLLM stands for a distilled model's speed. Adherence
and diversity alongside come from separate samples with natural stops (the length forced would append text after
the answer): the base unguided and with CFG 3 (transformers); a distilled model's adherence is in docs/results.

Writes `benchmarks/results/serving_reconciliation.md`, `serving.{md,json}` and `serving_dial.{md,json}`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
CACHE = RESULTS / "serving_cache.json"
WORK = Path(os.environ.get("SERVING_WORK", "/tmp/trl-diversity-serving"))
COMMAND = ".venv-vllm/bin/python benchmarks/serving.py"

# The settled method's workload: the same for both engines.
WORKLOAD = dict(prompts="open", num_prompts=20, k=8, max_tokens=48, force_length=True, warmup=True)
# The old figure's workload (`benchmarks/vllm_cpu.py --part serving`): 24 eval prompts x 6, natural stops.
OLD_WORKLOAD = dict(prompts="eval", num_prompts=24, k=6, max_tokens=48, force_length=False, warmup=True)
VLLM_DEFAULTS = dict(
    engine="vllm", dtype="float32", threads=1, engine_core="process", batch="all", prefix_caching=True
)
HF_DEFAULTS = dict(engine="transformers", scale=3.0, threads=2, batch="all")


# ---------------------------------------------------------------------------------------------------------------------
# Specs, the cache, and running one measurement in a fresh process


def spec_key(spec: dict) -> str:
    return json.dumps(spec, sort_keys=True)


def load_cache() -> dict:
    return json.loads(CACHE.read_text()) if CACHE.is_file() else {}


def save_result(spec: dict, result: dict) -> None:
    from trl_diversity.atomic import write_text_atomic

    cache = load_cache()
    cache[spec_key(spec)] = {"spec": spec, **result}
    write_text_atomic(CACHE, json.dumps(cache, indent=1, sort_keys=True))


def worker_env(spec: dict) -> dict:
    """The environment a measurement's fresh process starts with: the thread settings are the spec's, nothing
    inherited."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "VLLM_", "KMP_", "GOMP_"))}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", VLLM_CPU_KVCACHE_SPACE="1")
    # vLLM-CPU 0.31 cannot load its own AOT compile cache ("'function' object has no attribute 'finalize_loading'"),
    # so every engine would compile again (~100 s here); without AOT, inductor's own cache serves a second start.
    # Startup only: the compiled model is the same.
    env["VLLM_USE_AOT_COMPILE"] = "0"
    engine = spec["engine"]
    if engine == "transformers":
        env["OMP_NUM_THREADS"] = str(spec["threads"])
    elif engine == "one_process":  # as `benchmarks/vllm_cpu.py` was run: OMP_NUM_THREADS=2, vLLM's defaults
        env["OMP_NUM_THREADS"] = str(spec["threads"])
    else:  # vLLM (and the dial's engines)
        if spec.get("engine_core", "process") == "process":
            # The engine core and its worker in processes of their own (vLLM's default); the worker's OpenMP threads
            # bound to these cores. vLLM's own default on this 2-core machine ("auto") reserves one core for the
            # front end and the engine core, and binds the worker's one thread to the other: "0".
            env["VLLM_CPU_OMP_THREADS_BIND"] = "0" if spec["threads"] == 1 else f"0-{spec['threads'] - 1}"
        else:  # everything in the one Python process, torch at `threads` threads
            env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
            env["OMP_NUM_THREADS"] = str(spec["threads"])
    return env


def busy(names: list[str]) -> list[str]:
    found = []
    for name in names:
        run = subprocess.run(["pgrep", "-f", name], capture_output=True, text=True)
        found += [f"{name} ({pid})" for pid in run.stdout.split() if int(pid) != os.getpid()]
    return found


def measure(spec: dict, args, label: str) -> dict:
    """The cached result of `spec`, or a fresh process that measures it."""
    cache = load_cache()
    key = spec_key(spec)
    if key in cache and not any(pattern in key for pattern in args.redo):
        return cache[key]
    while others := busy(args.wait_for):
        print(f"  waiting: {', '.join(others)} running", flush=True)
        time.sleep(60)
    print(f"- {label}: {key}", flush=True)
    output = WORK / "results" / f"{hashlib.sha1(key.encode()).hexdigest()[:12]}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.unlink(missing_ok=True)
    log = output.with_suffix(".log")
    load_before = os.getloadavg()
    started = time.perf_counter()
    with open(log, "w") as handle:
        run = subprocess.run(
            [sys.executable, __file__, "--worker", key, str(output)],
            env=worker_env(spec),
            stdout=handle,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            timeout=args.timeout,
        )
    if run.returncode != 0 or not output.is_file():
        tail = log.read_text()[-4000:]
        raise RuntimeError(f"measurement failed ({run.returncode}): {key}\n{tail}")
    result = json.loads(output.read_text())
    result["process_seconds"] = time.perf_counter() - started
    result["load_before"], result["load_after"] = load_before, os.getloadavg()
    result["log_lines"] = [
        line for line in log.read_text().splitlines() if "core ids=" in line or "reserved_cpus" in line
    ][:4]
    save_result(spec, result)
    rate = result.get("tokens_per_s")
    print(
        f"  {rate:.1f} tokens/s" if rate else "  done",
        f"({result['process_seconds']:.0f} s in all, load {load_before[0]:.2f} -> {result['load_after'][0]:.2f})",
        flush=True,
    )
    return load_cache()[key]


# ---------------------------------------------------------------------------------------------------------------------
# Workers: each runs in a fresh process (`--worker SPEC OUTPUT`)


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


def vllm_records(outputs, prompts: list[str], stops: set[int]) -> list[dict]:
    return [
        {
            "prompt": prompt,
            "prompt_index": index,
            "sample": sample,
            "completion": choice.text,
            "completion_ids": [t for t in choice.token_ids if t not in stops],
        }
        for index, (prompt, output) in enumerate(zip(prompts, outputs))
        for sample, choice in enumerate(output.outputs)
    ]


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


def worker(key: str, output: str) -> None:
    from trl_diversity.atomic import write_text_atomic

    spec = json.loads(key)
    run = {
        "transformers": worker_transformers,
        "vllm": worker_vllm,
        "one_process": worker_one_process,
        "dial_lora": worker_dial_lora,
        "dial_merged": worker_dial_merged,
        "dial_transformers": worker_dial_transformers,
    }[spec["engine"]]
    result = run(spec)
    write_text_atomic(output, json.dumps(result, default=str))


# ---------------------------------------------------------------------------------------------------------------------
# Part 1: the reconciliation and the settled figure


def vllm_spec(**changes) -> dict:
    return {**VLLM_DEFAULTS, **WORKLOAD, **changes}


def hf_spec(**changes) -> dict:
    return {**HF_DEFAULTS, **WORKLOAD, **changes}


def rate(result: dict) -> float:
    return result["tokens_per_s"]


# Candidate engine settings: each engine's best is chosen among these (at the settled workload otherwise).
VLLM_CANDIDATES = {
    "bf16 (vLLM's `auto` for a float32 checkpoint on a CPU), 1 compute thread (first 4 prompts timed)": dict(
        dtype="auto", time_prompts=4
    ),
    "float32, 1 compute thread, engine core + worker in their own processes (vLLM's default layout here)": dict(
        threads=1
    ),
    "float32, 2 compute threads, engine core + worker in their own processes": dict(threads=2),
    "float32, 1 thread, everything in the front-end process (VLLM_ENABLE_V1_MULTIPROCESSING=0)": dict(
        threads=1, engine_core="inline"
    ),
    "float32, 2 threads, everything in the front-end process (VLLM_ENABLE_V1_MULTIPROCESSING=0)": dict(
        threads=2, engine_core="inline"
    ),
    "float32, 1 thread, one prompt's k samples a call (first 4 prompts timed)": dict(
        threads=1, batch=1, time_prompts=4
    ),
}
# Transformers with CFG: the two passes of every token make it slow, so the smaller batches time only their first
# prompts (a batch's speed does not depend on how many batches follow it).
HF_CANDIDATES = {
    "2 threads, all 20 prompts x 8 in one batch (160 rows)": dict(threads=2, batch="all"),
    "2 threads, 4 prompts x 8 a batch (the toolkit's default; first 8 prompts timed)": dict(
        threads=2, batch=4, time_prompts=8
    ),
    "2 threads, one prompt x 8 a batch (first 3 prompts timed)": dict(threads=2, batch=1, time_prompts=3),
    "1 thread, 4 prompts x 8 a batch (first 4 prompts timed)": dict(threads=1, batch=4, time_prompts=4),
}


def best(candidates: dict, make, args, label: str) -> tuple[str, dict, dict]:
    measured = {name: measure(make(**changes), args, f"{label}: {name}") for name, changes in candidates.items()}
    name = max(measured, key=lambda n: rate(measured[n]))
    return name, candidates[name], measured


def engine_settings(args) -> tuple[dict, dict, dict]:
    """Each engine's best settings, from its measured candidates."""
    vllm_name, vllm_best, vllm_measured = best(VLLM_CANDIDATES, vllm_spec, args, "vLLM")
    vllm_best = {k: v for k, v in vllm_best.items() if k != "time_prompts"}
    hf_name, hf_best, hf_measured = best(HF_CANDIDATES, hf_spec, args, "transformers CFG 3")
    hf_best = {k: v for k, v in hf_best.items() if k != "time_prompts"}
    return (
        {"vllm": vllm_spec(**vllm_best), "transformers": hf_spec(**hf_best)},
        {"vllm": vllm_name, "transformers": hf_name},
        {"vllm": vllm_measured, "transformers": hf_measured},
    )


# Request-level differences measured in the settled vLLM repeats' engines, after their timed call (saves an engine
# start each: ~2 min of compilation on this CPU).
SETTLED_EXTRAS = {
    1: [{"name": "natural stops", "force_length": False}],
    2: [{"name": "eval prompts", "prompts": "eval", "num_prompts": 24, "k": 6}],
}


def repeat(spec: dict, i: int) -> dict:
    """The i-th repeat of a measurement (the first is the spec itself, so a candidate's run counts as repeat 1)."""
    if not i:
        return spec
    extras = SETTLED_EXTRAS.get(i) if spec["engine"] == "vllm" else None
    return {**spec, "repeat": i, **({"extras": extras} if extras else {})}


def quality_spec(hf_best: dict, scale: float) -> dict:
    """Samples for adherence and diversity: the settled transformers setting with natural stops, texts kept."""
    label = "base" if scale == 1.0 else f"base + CFG {scale:g}"
    return {**hf_best, "scale": scale, "force_length": False, "keep_texts": True, "label": label}


def reconcile(args) -> dict:
    best_specs, best_names, candidates = engine_settings(args)
    vllm_best, hf_best = best_specs["vllm"], best_specs["transformers"]
    settled_vllm = measure(vllm_best, args, "settled vLLM, repeat 1")
    settled_hf = measure(hf_best, args, "settled transformers CFG 3, repeat 1")

    rows = {}
    # A difference at a time, from the settled method.
    one_process_spec = {
        "engine": "one_process",
        **WORKLOAD,
        "scale": 3.0,
        "threads": 2,
        "hf_batch": hf_best["batch"],
        "prefix_caching": True,
        "dtype": vllm_best["dtype"],
    }
    rows["process layout"] = measure(one_process_spec, args, "both engines in one process")
    # What the ratio is made of: CFG's second pass in transformers, and the engine, each at equal work.
    rows["transformers base"] = measure({**hf_best, "scale": 1.0}, args, "transformers, base without CFG (forced)")
    rows["prefix caching off"] = measure({**vllm_best, "prefix_caching": False}, args, "vLLM, prefix caching off")
    rows["natural stops"] = (
        measure(repeat(vllm_best, 1), args, "settled vLLM, repeat 2")["extras"]["natural stops"],
        measure(quality_spec(hf_best, 3.0), args, "natural stops, transformers CFG 3 (the quality samples)"),
    )
    # transformers compiles nothing: its warm-up is timed on a candidate's smaller batch, against the same warm.
    hf_small = next(hf_spec(**c) for c in HF_CANDIDATES.values() if c.get("time_prompts") and c["threads"] == 2)
    rows["no warm-up"] = (
        measure({**vllm_best, "warmup": False}, args, "no warm-up, vLLM"),
        measure({**hf_small, "warmup": False}, args, "no warm-up, transformers CFG 3 (a smaller batch)"),
        measure(hf_small, args, "warm, transformers CFG 3 (the same smaller batch)"),
    )
    eval_set = dict(prompts="eval", num_prompts=24, k=6)
    rows["eval prompts"] = (
        measure(repeat(vllm_best, 2), args, "settled vLLM, repeat 3")["extras"]["eval prompts"],
        measure({**hf_best, **eval_set}, args, "24 eval prompts x 6, transformers CFG 3"),
    )
    # The old figure's method whole, with the base model standing in for the distilled one in vLLM.
    old = {
        "engine": "one_process",
        **OLD_WORKLOAD,
        "scale": 3.0,
        "threads": 2,
        "hf_batch": 4,
        "prefix_caching": False,
        "dtype": "auto",
        "time_prompts": 8,  # bf16 is slow on this CPU: the first 8 of the 24 prompts
    }
    rows["old method"] = measure(old, args, "the old method (vllm_cpu.py --part serving), base in vLLM")
    return {
        "best": best_specs,
        "best_names": best_names,
        "candidates": candidates,
        "settled": {"vllm": settled_vllm, "transformers": settled_hf},
        "rows": rows,
    }


def settle(args, n: int = 3) -> dict:
    best_specs, best_names, _ = engine_settings(args)
    runs = {"vllm": [], "transformers": []}
    for i in range(n):  # alternating engines, so that a slow spell of the machine hits both
        runs["vllm"].append(measure(repeat(best_specs["vllm"], i), args, f"settled vLLM, repeat {i + 1}"))
        runs["transformers"].append(
            measure(repeat(best_specs["transformers"], i), args, f"settled transformers CFG 3, repeat {i + 1}")
        )
    quality_runs = {
        f"{quality_spec(best_specs['transformers'], scale)['label']}, transformers": measure(
            quality_spec(best_specs["transformers"], scale), args, f"quality samples, CFG {scale:g}"
        )
        for scale in (1.0, 3.0)
    }
    return {"best": best_specs, "best_names": best_names, "runs": runs, "quality_runs": quality_runs}


def quality(quality_runs: dict, served: dict | None = None) -> dict:
    """Adherence and diversity (`summarize`'s entries, per-prompt values included) of the quality samples, and of
    `served`: label -> records sampled by vLLM from the same prompts with the same k, length and temperature."""
    from trl_diversity.rewards.embedder import load_embedder
    from trl_diversity.toolkit.evaluation import summarize

    records = [{**r, "model": label} for label, run in quality_runs.items() for r in run["records"]]
    records += [{**r, "model": label} for label, rows in (served or {}).items() for r in rows]
    return summarize(records, load_embedder("default"))


def served_finetunes(dial_result: dict | None) -> dict:
    """The real finetunes' samples as vLLM served them (the dial's ends, as LoRA adapters), for the settled figure's
    quality table; none when the dial ran on random adapters."""
    if not dial_result or not dial_result.get("finetunes") or "error" in dial_result["lora"]:
        return {}
    points = list(dial_result["points"])
    samples = dial_result["lora"]["samples"]
    return {
        "beta = 0 (distilled), vLLM": samples[points[0]],
        "beta = 50 (distilled + diversity), vLLM": samples[points[-1]],
    }


# ---------------------------------------------------------------------------------------------------------------------
# Reports


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} (range {min(values):.1f}-{max(values):.1f})"


def ci(metric: dict) -> str:
    return "{mean:.3f} [{low:.3f}, {high:.3f}]".format(**metric)


def signed(difference: dict) -> str:
    return "{mean:+.3f} [{low:+.3f}, {high:+.3f}]".format(**difference)


def describe(spec: dict) -> str:
    skip = {"engine", "label", "keep_texts", "repeat"}
    return ", ".join(f"{k}={v}" for k, v in sorted(spec.items()) if k not in skip)


def machine() -> str:
    """The CPU, and whether it has native bf16 (AVX-512 BF16 or AMX): vLLM-CPU's bf16 is slow without."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    flags = set(next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), []))
    native = sorted(f for f in flags if f in {"avx512_bf16", "amx_bf16", "avx512f"})
    return f"{os.cpu_count()} x {model}, {'+'.join(native) if native else 'AVX2 only (no AVX-512, no AMX)'}"


def write_report(name: str, text: str, data: dict | None = None) -> None:
    from trl_diversity.atomic import write_text_atomic

    write_text_atomic(RESULTS / f"{name}.md", text)
    if data is not None:
        write_text_atomic(RESULTS / f"{name}.json", json.dumps(data, indent=1, default=str))
    print(text, flush=True)


def reconciliation_report(rec: dict, settled: dict) -> None:
    v0 = statistics.median(rate(r) for r in settled["runs"]["vllm"])
    h0 = statistics.median(rate(r) for r in settled["runs"]["transformers"])
    base_ratio = v0 / h0
    lines = [
        "# Serving benchmark: where the 4.3x and the 11.2x part\n",
        "Two figures for the same claim (a CFG-distilled model in vLLM-CPU against its base with CFG 3 in "
        "`transformers`, 2-core CPU): **4.3x** (`benchmarks/vllm_cpu.py --part serving`, "
        "[vllm_serving.md](vllm_serving.md)) and **11.2x** (552.8 against 49.3 tokens/s, measured separately). "
        "Each difference between the two methods is tested here on its own, from the settled method "
        f"([serving.md](serving.md)): vLLM {v0:.1f} tokens/s, transformers CFG 3 {h0:.1f}, **{base_ratio:.1f}x** "
        "(medians of 3 repeats). One run per changed setting; the settled repeats' spread "
        f"(vLLM {spread([rate(r) for r in settled['runs']['vllm']])}, transformers "
        f"{spread([rate(r) for r in settled['runs']['transformers']])}) is the noise to read them against.\n",
        f"Produced by `{COMMAND} --part reconcile` (each row a fresh process; settings of each in "
        "`serving_cache.json`). Speed does not depend on the weights, so the base model in vLLM stands for the "
        "distilled one; with natural stops it does not (the lengths differ), which is one reason to force them.\n",
        "## Engine settings (each engine's candidates; the best is the settled one)\n",
        "| engine | setting | tokens/s | warm-up call | startup |",
        "|---|---|---|---|---|",
    ]
    for engine, label in (("vllm", "vLLM"), ("transformers", "transformers CFG 3")):
        for name, result in rec["candidates"][engine].items():
            mark = " **(best)**" if name == rec["best_names"][engine] else ""
            lines.append(
                f"| {label} | {name}{mark} | {rate(result):.1f} | {result['warmup_s'] or 0:.1f} s | "
                f"{result['startup_s']:.0f} s |"
            )
    rows = rec["rows"]
    lines += [
        "\n## Each difference on its own\n",
        "Ratio = vLLM tokens/s / transformers-with-CFG-3 tokens/s; effect = that ratio / the settled ratio "
        f"({base_ratio:.1f}x). A row changes only the named setting.\n",
        "| difference | 4.3x method | 11.2x method (settled) | vLLM tokens/s | CFG 3 tokens/s | ratio | effect |",
        "|---|---|---|---|---|---|---|",
    ]

    def row(name, old, new, v, h):
        ratio = v / h
        lines.append(f"| {name} | {old} | {new} | {v:.1f} | {h:.1f} | {ratio:.1f}x | {ratio / base_ratio:.2f} |")

    vc, hc = rec["candidates"]["vllm"], rec["candidates"]["transformers"]
    one = rows["process layout"]
    row(
        "process layout",
        "both engines in one process (transformers first)",
        "a fresh process per engine",
        rate(one["vllm"]),
        rate(one["transformers"]),
    )
    for name, result in vc.items():
        if name != rec["best_names"]["vllm"]:
            row(f"vLLM: {name}", "", "", rate(result), h0)
    for name, result in hc.items():
        if name != rec["best_names"]["transformers"]:
            row(f"transformers: {name}", "", "", v0, rate(result))
    row("prefix caching", "off", "on", rate(rows["prefix caching off"]), h0)
    v, h = rows["natural stops"]
    row("early stops (tokens counted without the EOS)", "natural stops", "length forced", rate(v), rate(h))
    lines.append(
        f"|  ↳ counting vLLM's EOS tokens too | | | {v['tokens_per_s_with_eos']:.1f} | {rate(h):.1f} | "
        f"{v['tokens_per_s_with_eos'] / rate(h):.1f}x | {v['tokens_per_s_with_eos'] / rate(h) / base_ratio:.2f} |"
    )
    v, h_cold, h_warm = rows["no warm-up"]
    row("warm-up, vLLM", "none", "one prompt's call first", rate(v), h0)
    scaled = h0 * rate(h_cold) / rate(h_warm)
    row(
        "warm-up, transformers (scaled from 4 prompts a batch: "
        f"{rate(h_cold):.1f} cold against {rate(h_warm):.1f} warm)",
        "none (the base's run came first)",
        "one prompt's call first",
        v0,
        scaled,
    )
    v, h = rows["eval prompts"]
    row("prompt set", "24 eval prompts x 6", "20 open questions x 8", rate(v), rate(h))
    old = rows["old method"]
    row(
        "**all of the 4.3x method at once** (base model in vLLM; the first 8 of its 24 prompts)",
        "one process, bf16, eval prompts x 6, natural stops, prefix caching off, CFG batch of 4 prompts",
        "",
        rate(old["vllm"]),
        rate(old["transformers"]),
    )
    hf_base = rate(rows["transformers base"])
    cfg_cost, engine_gain = hf_base / h0, v0 / hf_base
    bf16 = next(rate(r) for n, r in vc.items() if n.startswith("bf16"))
    f32_1 = next(rate(r) for n, r in vc.items() if n.startswith("float32, 1 compute thread, engine core"))
    lines += [
        "",
        "## What the settled ratio is made of, and what limits it\n",
        f"At the settled setting and equal work (48 tokens forced), transformers samples the base without CFG at "
        f"{hf_base:.1f} tokens/s against {h0:.1f} with CFG 3: **CFG's second pass costs {cfg_cost:.2f}x** (two "
        "passes a token; at most 2x in a compute-bound batch, more where batching was the bottleneck). vLLM samples "
        f"the same model at {v0:.1f}: **the engine gains {engine_gain:.2f}x** over transformers at one pass a token. "
        f"{cfg_cost:.2f} x {engine_gain:.2f} = {cfg_cost * engine_gain:.1f}x, the settled figure. On 2 CPU cores both "
        "engines are bound by the same matrix products, so vLLM's serving machinery (continuous batching, paged KV "
        "cache, CUDA graphs on a GPU) has little to win: 10x would need the engine alone to be "
        f"{10 / cfg_cost:.1f}x faster than transformers on the same model. The figure is a property of the machine "
        "as much as of the method.\n",
        f"The machine matters most through bf16. This CPU ({machine()}) has no native bf16: vLLM's default dtype for "
        f"this checkpoint (bf16) serves {bf16:.1f} tokens/s against {f32_1:.1f} in float32 at the same thread, "
        f"{f32_1 / bf16:.1f}x slower. The 4.3x figure's vLLM served the distilled model in vLLM's default dtype at "
        "288.9 tokens/s ([vllm_serving.md](vllm_serving.md)), and the 11.2x figure's at 552.8 with one compute "
        "thread: neither rate is reachable here in any dtype or setting above. Their CPUs were not recorded; the likely "
        "cause is native bf16 (AVX-512 BF16 or AMX), which this machine cannot test. The reconstruction of the 4.3x method on this CPU "
        "(the last row) gives 0.3x for that reason alone. A figure from one CPU does not carry to another: the "
        "README quotes this one with its machine.\n",
        f"Mean completion length with natural stops: vLLM {rows['natural stops'][0]['mean_length']:.1f} tokens, "
        f"transformers CFG 3 {rows['natural stops'][1]['mean_length']:.1f} (forced: 48).",
        "",
        "vLLM's natural-stop and eval-prompt rows ran in the engines of the settled repeats 2 and 3, after their "
        "timed call (an engine start costs ~2 min of compilation here). Load average (1 min) before each row is in "
        "`serving_cache.json` (`load_before`).",
    ]
    write_report("serving_reconciliation", "\n".join(lines) + "\n")


def matched_adherence(paired: dict) -> str:
    """What the paired adherence of the distilled `beta = 0` model against CFG 3 says about the speed-up."""
    label, difference = next(iter(paired.items()))
    adherence = difference["adherence"]
    if adherence["low"] > 0:
        verdict = (
            "above CFG 3's adherence (its CI excludes zero), so the figure above is a speed-up at equal or better"
        )
    elif adherence["high"] < 0:
        verdict = "below CFG 3's adherence (its CI excludes zero), so the figure above is not a speed-up at matched"
    else:
        verdict = "at CFG 3's adherence (its CI contains zero), so the figure above is the speed-up at matched"
    return f"On these prompts the {label.rsplit(',', 1)[0]} model is {signed(adherence)} in adherence: {verdict} adherence."


def settled_report(settled: dict, summary: dict) -> None:
    from trl_diversity.toolkit.comparison import paired_difference

    v = [rate(r) for r in settled["runs"]["vllm"]]
    h = [rate(r) for r in settled["runs"]["transformers"]]
    ratios = [a / b for a, b in zip(v, h)]
    ratio = statistics.median(v) / statistics.median(h)
    q = settled["quality_runs"]
    metrics = {label: entry["metrics"] for label, entry in summary.items()}
    cfg_label = "base + CFG 3, transformers"
    paired = {
        label: {
            m: paired_difference(entry["per_prompt"][m], summary[cfg_label]["per_prompt"][m])
            for m in ("adherence", "pairwise_diversity")
        }
        for label, entry in summary.items()
        if label.endswith("vLLM")
    }
    data = {
        "method": __doc__.split("The settled method")[1].split("Writes")[0].strip(),
        "command": f"{COMMAND} --part settled",
        "settings": settled["best"],
        "setting_names": settled["best_names"],
        "tokens_per_s": {"vllm": v, "transformers_cfg3": h},
        "ratio_of_medians": ratio,
        "ratios_per_repeat": ratios,
        "quality": metrics,
        "paired_against_cfg3": paired,
        "quality_tokens_per_s": {label: rate(run) for label, run in q.items()},
        "machine": machine(),
        "load_before": {engine: [r["load_before"] for r in runs] for engine, runs in settled["runs"].items()},
    }
    base_q, cfg_q = metrics["base, transformers"], metrics["base + CFG 3, transformers"]
    lines = [
        "# Serving: a CFG-distilled model in vLLM-CPU against CFG 3 in transformers (the settled figure)\n",
        f"`{COMMAND} --part settled` (after `--part reconcile`, which chose each engine's settings): SmolLM2-135M-"
        "Instruct, 20 short open questions (`prompts_open.jsonl`) x 8 samples x 48 new tokens, length forced, "
        "temperature 1, each engine in a fresh process at its best measured setting, one warm-up call, 3 repeats "
        f"alternating engines, on {machine()}. Load average (1 min) before each timed run: "
        + ", ".join(f"{r['load_before'][0]:.1f}" for pair in zip(*settled["runs"].values()) for r in pair)
        + " (other agents' jobs share this machine; the ratios are steadier than the rates).\n",
        "| engine | model | passes / token | setting | tokens/s, 3 repeats: median (range) |",
        "|---|---|---|---|---|",
        f"| vLLM-CPU 0.31 ({settled['best']['vllm']['dtype']}) | distilled (the base's architecture stands in) | 1 | {settled['best_names']['vllm']} "
        f"| {spread(v)} |",
        f"| transformers 5.17 (float32) | base + CFG 3 | 2 | {settled['best_names']['transformers']} | {spread(h)} |",
        "",
        f"**{ratio:.1f}x tokens/s** (ratio of medians; per repeat {', '.join(f'{x:.1f}x' for x in ratios)}).",
        "",
        "Adherence and diversity of the same prompts, 8 samples each, natural stops (transformers at its settled "
        "setting; tokens/s with natural stops: "
        + ", ".join(f"{label.split(',')[0]} {rate(run):.1f}" for label, run in q.items())
        + "):",
        "",
        "| model | passes / token | adherence | pairwise diversity |",
        "|---|---|---|---|",
        f"| base | 1 | {ci(base_q['adherence'])} | {ci(base_q['pairwise_diversity'])} |",
        f"| base + CFG 3 | 2 | {ci(cfg_q['adherence'])} | {ci(cfg_q['pairwise_diversity'])} |",
    ]
    for label in paired:
        name = label.rsplit(",", 1)[0]
        lines.append(
            f"| {name}, served by vLLM as a LoRA adapter | 1 | {ci(metrics[label]['adherence'])} | "
            f"{ci(metrics[label]['pairwise_diversity'])} |"
        )
    lines.append("")
    if paired:
        lines += [
            "Paired on the same prompts, each distilled model minus base + CFG 3 (mean [95% bootstrap CI over the 20 "
            "prompts]; the distilled models are `experiments.reproduce`'s, served from the dial's engine in "
            "[serving_dial.md](serving_dial.md)):",
            "",
            "| model | adherence | pairwise diversity |",
            "|---|---|---|",
            *(
                f"| {label.rsplit(',', 1)[0]} | {signed(d['adherence'])} | {signed(d['pairwise_diversity'])} |"
                for label, d in paired.items()
            ),
            "",
            matched_adherence(paired),
            "",
            "These samples come from the dial's LoRA engine, whose greedy tokens equal the merged models' token for "
            "token; the speed above is a merged model's (a LoRA engine is much slower on vLLM-CPU: "
            "[serving_dial.md](serving_dial.md)).",
        ]
    else:
        lines.append(
            "The distilled models' samples come from `--part dial --finetunes QUALITY DIVERSITY` (their adapters, "
            "trained by `experiments.reproduce`); without them this table has the base's rows only."
        )
    write_report("serving", "\n".join(lines) + "\n", data)


# ---------------------------------------------------------------------------------------------------------------------
# Part 3: the dial served per request


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
    while others := busy(args.wait_for):
        print(f"  waiting: {', '.join(others)} running", flush=True)
        time.sleep(60)
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


def bf16_lines(bf16: dict, bf16_margins: list, middle: str, cell) -> list[str]:
    """The greedy comparison in bf16 (`--dial_bf16`): vLLM's default dtype on a CPU."""
    return [
        f"In bf16 (vLLM's `auto` on a CPU), w = {middle}, the first {DIAL_BF16_PROMPTS} prompts:\n",
        "| " + " | ".join(bf16) + " |",
        "|" + "---|" * len(bf16),
        "| " + " | ".join(cell(g) for g in bf16.values()) + " |",
        "",
        "bf16 keeps 8 bits of mantissa (a logit near 20 rounds by ~0.06); the LoRA path adds `x A B` in bf16 beside "
        "the bf16 base weight while the merged path rounds `W + B A` to bf16 once, so the two bf16 paths differ in "
        "the last bit and a near tie goes either way; from there the completions part. Margins at the first "
        "difference from float32: "
        + (
            f"median {statistics.median(bf16_margins):.3f}, largest {max(bf16_margins):.3f}"
            if bf16_margins
            else "none differed"
        )
        + ". So in bf16 the served point and the merged model are equal as distributions, not token for token; "
        "the sampled comparison below is the test that applies.\n",
    ]


def dial_report(result: dict) -> None:
    lines = ["# The quality-diversity dial served per request: LoRA adapters on one vLLM-CPU engine\n"]
    if "error" in result["lora"]:
        lines += ["vLLM-CPU could not serve LoRA:\n", "```", result["lora"]["error"], "```"]
        write_report("serving_dial", "\n".join(lines) + "\n", result)
        return
    from trl_diversity.rewards.embedder import load_embedder
    from trl_diversity.toolkit.comparison import paired_difference
    from trl_diversity.toolkit.evaluation import summarize

    lora, merged, middle = result["lora"], result["merged"], result["middle"]
    reference = {p: {int(k): v for k, v in rows.items()} for p, rows in result["reference"]["greedy"].items()}
    points = list(merged)

    def tokens_of(run, point):
        return {int(k): v for k, v in run["greedy"][point].items()}

    def plain(rows):
        return {k: {"tokens": v, "margins": []} for k, v in rows.items()}

    greedy = {}
    for point in points:
        greedy[point] = {
            "LoRA vs merged (eager), both vLLM float32": compare_greedy(
                tokens_of(lora, point), plain(tokens_of(merged[point], point))
            ),
            "LoRA (vLLM float32) vs merged (transformers float32)": compare_greedy(
                tokens_of(lora, point), reference[point]
            ),
            "merged (vLLM float32, eager) vs merged (transformers float32)": compare_greedy(
                tokens_of(merged[point], point), reference[point]
            ),
        }
    head = {k: v for k, v in reference[middle].items() if k < DIAL_BF16_PROMPTS}
    bf16 = (
        {}
        if result.get("lora_bf16") is None
        else {
            "LoRA vs merged, both vLLM bf16": compare_greedy(
                tokens_of(result["lora_bf16"], middle), plain(tokens_of(result["merged_bf16"], middle))
            ),
            "LoRA (vLLM bf16) vs merged (transformers float32)": compare_greedy(
                tokens_of(result["lora_bf16"], middle), head
            ),
            "merged (vLLM bf16) vs merged (transformers float32)": compare_greedy(
                tokens_of(result["merged_bf16"], middle), head
            ),
        }
    )
    between = compare_greedy(tokens_of(lora, points[0]), plain(tokens_of(lora, points[-1])))

    records = []
    for point in points:
        records += [{**r, "model": f"{point} LoRA"} for r in lora["samples"][point]]
        records += [{**r, "model": f"{point} merged"} for r in merged[point]["samples"][point]]
    summary = summarize(records, load_embedder("default"))

    lora_rate, merged_rate = lora["tokens_per_s"], result["merged_compiled"]["tokens_per_s"]
    eager_rate = merged[middle]["tokens_per_s"]
    n_points = len(points)
    rank = adapter_rank(result["points"][middle]["adapter"])
    if result.get("finetunes"):
        ends = (
            f"the reproduction's two finetunes of SmolLM2-135M-Instruct: `{Path(result['finetunes'][0]).name}` (the "
            f"quality model, w = 0) and `{Path(result['finetunes'][1]).name}` (the diversity model, w = 1), "
            f"LoRA r = {rank // 2} each"
        )
        command = f"{COMMAND} --part dial --finetunes " + " ".join(
            os.path.relpath(folder, ROOT) for folder in result["finetunes"]
        )
    else:
        ends = (
            f"two random LoRA finetunes of SmolLM2-135M-Instruct (r = {DIAL_RANK} each on q, v, o, up, down; "
            "B ~ N(0, 0.02), A as PEFT draws it)"
        )
        command = f"{COMMAND} --part dial"
    lines += [
        f"`{command}`: {ends}, and the dial points w = "
        f"{', '.join(points)} of `(1 - w) A + w B`, each written by `trl_diversity.toolkit.merging.lerp_merge` twice: "
        f"as one concatenated adapter (rank {rank}) and merged into the base. One vLLM-CPU engine "
        f"(`enable_lora=True, max_lora_rank={rank}, max_loras={n_points + 1}`) serves every point, each "
        "request naming its adapter (`LoRARequest`), the points interleaved in one batch; against one engine per "
        "merged point. 20 open questions; float32, 2 compute threads (vLLM's settled setting, "
        "[serving.md](serving.md)); each engine in a fresh process.\n",
        "## The price of serving LoRA\n",
        "| served as | timed call (length forced to 48 tokens) | tokens/s | startup |",
        "|---|---|---|---|",
        f"| LoRA, {n_points} points mixed per request | 20 prompts x {n_points} points x {lora['spec']['timed_k']} "
        f"samples ({lora['sequences']} sequences) | {lora_rate:.1f} | {lora['startup_s']:.0f} s |",
        f"| merged point {middle}, compiled (vLLM's default) | 20 prompts x {merged[middle]['spec']['timed_k']} "
        f"samples ({merged[middle]['sequences']} sequences) | {merged_rate:.1f} | "
        f"{result['merged_compiled']['startup_s']:.0f} s |",
        f"| merged point {middle}, eager (`enforce_eager=True`) | the same | {eager_rate:.1f} | "
        f"{merged[middle]['startup_s']:.0f} s |",
        "",
        f"**LoRA / merged: {lora_rate / merged_rate:.2f}x tokens/s** (against the eager merged model: "
        f"{lora_rate / eager_rate:.2f}x). One run each. vLLM-CPU runs a LoRA engine eagerly (`platforms/cpu.py` sets "
        "`CompilationMode.NONE` when LoRA is on) and adds, per layer, the LoRA product `x A B` through PyTorch ops "
        "(`PunicaWrapperCPU`); the merged model is one matrix a layer. What the LoRA engine buys is the whole dial "
        f"from one engine: serving the {n_points} points merged takes {n_points} engines ({n_points} copies of the "
        "weights and of the KV cache).\n",
        "## Each served point gives its merged model's tokens\n",
        "Greedy completions (at most 48 tokens, end-of-sequence ends them) of the 20 prompts, per point: completions "
        "identical, and the share of tokens before the first difference.\n",
        "| point | " + " | ".join(greedy[points[0]]) + " |",
        "|---|" + "---|" * len(greedy[points[0]]),
    ]

    def cell(g):
        return f"{g['identical']}/{g['prompts']} ({g['matching_prefix_share']:.0%} of tokens)"

    for point in points:
        lines.append(f"| w = {point} | " + " | ".join(cell(g) for g in greedy[point].values()) + " |")
    margins = [m for p in points for g in greedy[p].values() for m in g["first_difference_margins"]]
    bf16_margins = [m for g in bf16.values() for m in g["first_difference_margins"]]
    lines += [
        "",
        f"Between the points (w = {points[0]} against w = {points[-1]}, both served as LoRA): {cell(between)}: each "
        "request got its own adapter. Where a float32 completion leaves transformers' float32 one, the margin between "
        "transformers' two best logits there: "
        + (f"median {statistics.median(margins):.4f}, largest {max(margins):.4f}" if margins else "never needed")
        + " (float32 rounds the LoRA path `x W + (x A) B` and the merged `x (W + B A)` differently in the last bits; "
        "only a near tie can flip).\n",
    ]
    if bf16:
        lines += bf16_lines(bf16, bf16_margins, middle, cell)
    lines += [
        "## Adherence and diversity, served point against merged point\n",
        f"{lora['spec']['samples_k']} samples per prompt, temperature 1, natural stops, float32; mean [95% bootstrap "
        "CI over the 20 prompts]"
        + (
            "; paired differences, LoRA minus merged, on the same prompts.\n"
            if result.get("finetunes")
            else ". The adapters are random, so the absolute values say nothing about a real dial.\n"
        ),
        "| point | adherence, LoRA | adherence, merged | LoRA - merged | diversity, LoRA | diversity, merged "
        "| LoRA - merged | CIs overlap |",
        "|---|---|---|---|---|---|---|---|",
    ]
    paired = {}
    for point in points:
        lo, me = summary[f"{point} LoRA"], summary[f"{point} merged"]
        paired[point] = {
            m: paired_difference(lo["per_prompt"][m], me["per_prompt"][m]) for m in ("adherence", "pairwise_diversity")
        }
        lo, me = lo["metrics"], me["metrics"]
        overlap = all(
            lo[m]["low"] <= me[m]["high"] and me[m]["low"] <= lo[m]["high"]
            for m in ("adherence", "pairwise_diversity")
        )
        lines.append(
            f"| w = {point} | {ci(lo['adherence'])} | {ci(me['adherence'])} | "
            f"{signed(paired[point]['adherence'])} | {ci(lo['pairwise_diversity'])} | "
            f"{ci(me['pairwise_diversity'])} | {signed(paired[point]['pairwise_diversity'])} | "
            f"{'yes' if overlap else 'no'} |"
        )
    result["paired_lora_minus_merged"] = paired
    result["greedy_comparison"] = {"float32": greedy, "bf16": bf16, "between_points": between}
    result["metrics"] = {label: entry["metrics"] for label, entry in summary.items()}
    result["lora_over_merged_speed"] = lora_rate / merged_rate
    for key in ("lora", "lora_bf16", "merged_bf16", "merged_compiled"):
        if result.get(key) is not None:
            result[key].pop("samples", None)
    for run in result["merged"].values():
        run.pop("samples", None)
    write_report("serving_dial", "\n".join(lines) + "\n", result)


# ---------------------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=["all", "reconcile", "settled", "dial", "report"], default="all")
    parser.add_argument("--worker", nargs=2, metavar=("SPEC", "OUTPUT"), help=argparse.SUPPRESS)
    parser.add_argument("--redo", nargs="*", default=[], help="measure again the cached specs containing these")
    parser.add_argument("--wait_for", nargs="*", default=["experiments.teacher_front"])
    parser.add_argument("--timeout", type=int, default=900, help="seconds one measurement may take")
    parser.add_argument(
        "--dial_bf16",
        action="store_true",
        help="--part dial: also compare LoRA and merged greedy tokens in bf16 (two more engine starts, slow on a CPU "
        "without native bf16)",
    )
    parser.add_argument(
        "--finetunes",
        nargs=2,
        metavar=("QUALITY", "DIVERSITY"),
        default=None,
        help="--part dial: the dial's ends, two LoRA adapters of the default model (w = 0 and w = 1; e.g. "
        "experiments.reproduce's quality and diversity models under outputs/); default: two random adapters",
    )
    args = parser.parse_args(argv)
    for folder in args.finetunes or []:
        if not (Path(folder) / "adapter_config.json").is_file():
            parser.error(f"--finetunes: {folder} is not a LoRA adapter folder (no adapter_config.json)")
    if args.worker:
        worker(*args.worker)
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    dial_result = None
    if args.part in ("all", "dial", "report"):
        dial_result = dial(args)
        served = served_finetunes(dial_result)  # before the report drops the samples from the result
        dial_report(dial_result)
    else:
        served = {}
    if args.part in ("all", "reconcile", "settled", "report"):
        settled = settle(args)
        settled_report(settled, quality(settled["quality_runs"], served))
        if args.part != "settled":
            reconciliation_report(reconcile(args), settled)


if __name__ == "__main__":
    sys.exit(main())
