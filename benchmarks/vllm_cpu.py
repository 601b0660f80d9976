"""vLLM on a CPU, measured: training steps with and without vLLM generation, and serving a distilled model.

Runs in the vLLM environment (`bash scripts/setup_vllm.sh`):

    VLLM_CPU_KVCACHE_SPACE=1 OMP_NUM_THREADS=2 .venv-vllm/bin/python benchmarks/vllm_cpu.py --part step_time
    VLLM_CPU_KVCACHE_SPACE=1 OMP_NUM_THREADS=2 .venv-vllm/bin/python benchmarks/vllm_cpu.py --part serving \
        --model outputs/reproduce-full/quality-76e7fd2ea2

- `step_time`: `DiversityCFGTrainer` on the default job (SmolLM2-135M, LoRA, 8 completions of 48 tokens a step, the
  method on), once generating with `transformers` and once with vLLM in colocate mode, built in one process and run
  in alternating rounds, so that machine noise hits both alike. Records each step's time, and what TRL logs about the
  mismatch between vLLM's bf16 samples and the float32 policy (`sampling/*`).
- `serving`: the distilled finetune (merged) generating in vLLM, against the base model with CFG
  (`generate(guidance_scale=3)`, two forward passes a token) and without it, through `transformers`; the same eval
  prompts, `k` and length, side by side in one process; tokens/s with each one's adherence and diversity.

Writes `benchmarks/results/vllm_<part>.{json,md}`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "2")  # without it vLLM cuts torch to one thread for the whole process
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
VLLM_SETTINGS = dict(
    use_vllm=True,
    vllm_mode="colocate",
    vllm_gpu_memory_utilization=0.3,  # on a CPU, the share of RAM vLLM reserves
    vllm_enable_sleep_mode=False,
    vllm_max_model_length=512,
)


def write(name: str, data: dict, table: str) -> None:
    from trl_diversity.atomic import write_text_atomic

    write_text_atomic(RESULTS / f"{name}.json", json.dumps(data, indent=1, default=str))
    write_text_atomic(RESULTS / f"{name}.md", table)
    print(table)


# ---------------------------------------------------------------------------------------------------------------------
# Training steps


def step_time(rounds: int, steps: int) -> None:
    import torch
    from peft import LoraConfig

    from trl_diversity import DiversityCFGConfig, DiversityCFGTrainer, load_prompts
    from trl_diversity.defaults import DEFAULT_JOB_LORA

    def build(name: str, **extra):
        args = DiversityCFGConfig.default_job(
            output_dir=f"/tmp/vllm-step-time-{name}", max_steps=steps, save_strategy="no", disable_tqdm=True, **extra
        )
        return DiversityCFGTrainer(
            model="default",
            args=args,
            train_dataset=load_prompts("train", conversational=True),
            peft_config=LoraConfig(**DEFAULT_JOB_LORA),
        )

    trainers = {"transformers": build("transformers"), "vllm": build("vllm", **VLLM_SETTINGS)}
    print(f"torch threads: {torch.get_num_threads()}", flush=True)
    times = {name: [] for name in trainers}
    sampling = []
    for round_index in range(rounds):
        for name, trainer in trainers.items():
            trainer.train()
            rows = [row for row in trainer.state.log_history if "step_time" in row][-steps:]
            times[name] += [row["step_time"] for row in rows[1:]]  # the round's first step warms up
            if name == "vllm":
                sampling += [{k: v for k, v in row.items() if k.startswith("sampling/")} for row in rows]
            print(f"round {round_index + 1} {name}: {[round(row['step_time'], 2) for row in rows]}", flush=True)
    median = {name: statistics.median(values) for name, values in times.items()}
    mismatch = {
        key: statistics.mean(row[key] for row in sampling if key in row)
        for key in sorted({key for row in sampling for key in row})
    }
    data = {"rounds": rounds, "steps_per_round": steps, "step_times": times, "median": median, "sampling": mismatch}
    table = (
        "# DiversityCFGTrainer steps with and without vLLM generation (colocate, CPU)\n\n"
        f"`benchmarks/vllm_cpu.py --part step_time`: the default job (SmolLM2-135M, LoRA, 8 completions of 48 tokens a "
        f"step, the method on), {rounds} alternating rounds of {steps} steps, the first step of each round left out.\n\n"
        "| generation | median step | steps measured |\n|---|---|---|\n"
        + "".join(f"| {name} | {median[name]:.2f} s | {len(times[name])} |\n" for name in times)
        + f"\n**vLLM / transformers: {median['vllm'] / median['transformers']:.2f}x**\n\n"
        "The mismatch TRL measures between vLLM's bf16 sampler and the float32 policy (mean over the vLLM steps):\n\n"
        + "".join(f"- `{key}`: {value:.4f}\n" for key, value in mismatch.items())
    )
    write("vllm_step_time", data, table)


# ---------------------------------------------------------------------------------------------------------------------
# Serving


def merged_folder(model_path: str, target: Path) -> Path:
    """The finetune as one plain checkpoint (a LoRA adapter merged into its base), which vLLM serves."""
    from trl_diversity.toolkit.generation import load_generation_model

    if (target / "config.json").is_file():
        return target
    model, tokenizer = load_generation_model(model_path)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


def serving(model_path: str, num_prompts: int, k: int, max_new_tokens: int) -> None:
    from vllm import LLM, SamplingParams

    from trl_diversity.data import load_prompts
    from trl_diversity.rewards.embedder import load_embedder
    from trl_diversity.toolkit.evaluation import summarize
    from trl_diversity.toolkit.generation import generate_records, load_generation_model

    prompts = list(load_prompts("eval", limit=num_prompts)["prompt"])
    folder = merged_folder(model_path, Path("/tmp/vllm-serving") / Path(model_path).name)
    records, runs = [], {}

    # The base through transformers, without and with CFG (the toolkit's own generation, as `trl-diversity generate`).
    base, tokenizer = load_generation_model("default")
    for label, scale in (("base, transformers", 1.0), ("base + CFG 3, transformers", 3.0)):
        started = time.perf_counter()
        rows = list(
            generate_records(
                base,
                tokenizer,
                prompts,
                num_samples=k,
                max_new_tokens=max_new_tokens,
                guidance_scale=scale,
                temperature=1.0,
                seed=0,
                label=label,
                progress=False,
            )
        )
        runs[label] = {"seconds": time.perf_counter() - started, "tokens": sum(len(r["completion_ids"]) for r in rows)}
        records += rows
        print(label, runs[label], flush=True)
    del base

    # The distilled finetune, merged, in vLLM. The engine is seeded (a per-request seed crashes vLLM-CPU 0.31).
    llm = LLM(model=str(folder), seed=0, max_model_len=512, enable_prefix_caching=False)
    params = SamplingParams(n=k, temperature=1.0, top_p=1.0, max_tokens=max_new_tokens)
    conversations = [[{"role": "user", "content": prompt}] for prompt in prompts]
    llm.chat(conversations[:1], params, use_tqdm=False)  # warm-up: the first call compiles
    started = time.perf_counter()
    outputs = llm.chat(conversations, params, use_tqdm=False)
    seconds = time.perf_counter() - started
    label = "distilled (merged), vLLM"
    tokens = sum(len(choice.token_ids) for output in outputs for choice in output.outputs)
    runs[label] = {"seconds": seconds, "tokens": tokens}
    print(label, runs[label], flush=True)
    for index, (prompt, output) in enumerate(zip(prompts, outputs)):
        for sample, choice in enumerate(output.outputs):
            records.append(
                {
                    "model": label,
                    "prompt": prompt,
                    "prompt_index": index,
                    "sample": sample,
                    "completion": choice.text,
                    "completion_ids": list(choice.token_ids),
                    "guidance_scale": 1.0,
                    "forward_passes_per_token": 1,
                    "seconds": seconds * len(choice.token_ids) / max(tokens, 1),
                }
            )

    summary = summarize(records, load_embedder(None, device="cpu"))
    data = {"model": model_path, "num_prompts": num_prompts, "k": k, "max_new_tokens": max_new_tokens, "runs": runs}
    data["metrics"] = {label: entry["metrics"] for label, entry in summary.items()}
    lines = [
        "# Serving: the distilled model in vLLM against CFG in transformers (CPU)\n",
        f"`benchmarks/vllm_cpu.py --part serving --model {model_path}`: {num_prompts} bundled eval prompts x {k} "
        f"samples x at most {max_new_tokens} new tokens, temperature 1, side by side in one process.\n",
        "| model | engine | passes / token | tokens/s | adherence | pairwise diversity |",
        "|---|---|---|---|---|---|",
    ]
    for label, run in runs.items():
        metrics = summary[label]["metrics"]
        cells = [
            label.split(", ")[0],
            label.split(", ")[1],
            str(summary[label]["forward_passes_per_token"]),
            f"{run['tokens'] / run['seconds']:.1f}",
            "{mean:.3f} [{low:.3f}, {high:.3f}]".format(**metrics["adherence"]),
            "{mean:.3f} [{low:.3f}, {high:.3f}]".format(**metrics["pairwise_diversity"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    speed = {label: run["tokens"] / run["seconds"] for label, run in runs.items()}
    lines.append(
        f"\n**vLLM distilled / transformers CFG 3: {speed[label] / speed['base + CFG 3, transformers']:.1f}x tokens/s**"
        f" (transformers without CFG: {speed['base, transformers'] / speed['base + CFG 3, transformers']:.1f}x).\n"
    )
    write("vllm_serving", data, "\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=["step_time", "serving"], required=True)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3, help="steps a round (the first is warm-up)")
    parser.add_argument("--model", help="serving: the distilled finetune (an adapter or a checkpoint folder)")
    parser.add_argument("--num_prompts", type=int, default=24)
    parser.add_argument("--k", type=int, default=6)
    parser.add_argument("--max_new_tokens", type=int, default=48)
    args = parser.parse_args(argv)
    if args.part == "serving":
        if not args.model or not Path(args.model).exists():
            parser.error(f"--part serving needs --model, the distilled finetune's folder (got {args.model!r})")
        serving(args.model, args.num_prompts, args.k, args.max_new_tokens)
    else:
        step_time(args.rounds, args.steps)


if __name__ == "__main__":
    sys.exit(main())
