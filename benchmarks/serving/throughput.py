"""Part 1: the settled figure (each engine at its best measured setting, three repeats) and the reconciliation (one
difference between the two old methods at a time)."""

from __future__ import annotations

from .measurement import measure

# The settled method's workload: the same for both engines.
WORKLOAD = dict(prompts="open", num_prompts=20, k=8, max_tokens=48, force_length=True, warmup=True)
# The old figure's workload (`benchmarks/vllm_cpu.py --part serving`): 24 eval prompts x 6, natural stops.
OLD_WORKLOAD = dict(prompts="eval", num_prompts=24, k=6, max_tokens=48, force_length=False, warmup=True)
VLLM_DEFAULTS = dict(
    engine="vllm", dtype="float32", threads=1, engine_core="process", batch="all", prefix_caching=True
)
HF_DEFAULTS = dict(engine="transformers", scale=3.0, threads=2, batch="all")


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
