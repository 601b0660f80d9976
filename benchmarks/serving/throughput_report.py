"""The reports of part 1: `serving_reconciliation.md` and `serving.{md,json}`."""

from __future__ import annotations

import statistics

from . import __doc__ as USAGE
from .formatting import ci, machine, signed, spread, write_report
from .measurement import COMMAND
from .throughput import rate


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
        "method": USAGE.split("The settled method")[1].split("Writes")[0].strip(),
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
