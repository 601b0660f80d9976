"""The report of `reproduce.py`: claims table, paired comparisons, front gaps at matched quality, plots.

Everything here reads the cached points and training logs only, so `reproduce.py --report_only` rebuilds it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from experiments import rules
from experiments.front_gaps import matched_quality_gap
from experiments.rules import ADHERENCE_MARGIN, MIN_SHARED_RANGE, claim_b_verdict, percent_ci, relative
from trl_diversity.atomic import write_text_atomic
from trl_diversity.toolkit.comparison import paired_difference

QUALITY = "adherence"
MINILM = "pairwise_diversity"
# Diversity judges that training never saw: a second embedding space (the base model's mean-pooled hidden states),
# the partition count (NoveltyBench's distinct_k) and lexical measures.
HELD_OUT = {"base_lm_diversity": "higher", "partitions": "higher", "distinct_2": "higher", "self_bleu": "lower"}
FAMILIES = {
    "cfg": ("CFG on the base (2 passes / token; 1 at gamma = 1)", "tab:red", "s"),
    "temperature": ("temperature on the base (1 pass / token)", "tab:green", "^"),
    "lerp": ("LERP of the two finetunes (1 pass / token)", "tab:blue", "o"),
}
# The rules of the claims (the margins of (a) and (b), the range rule and Holm's correction of (c)) are defined once,
# in experiments/rules.py, for this report and compare_finetunes alike.
# diversity/coef is logged only with a diversity target: the coefficient the controller set for each batch.
TRAINING_CURVES = (
    "distill/divergence",
    "diversity/pairwise",
    "diversity/coef",
    "diversity/advantage_abs",
    "learning_rate",
)


def finetune_label(name: str, finetune: dict) -> str:
    """`diversity (beta = 15)`, or `diversity (target initial, beta from 15)` for a target model; RLOO and other
    seeds say so."""
    target = finetune.get("diversity_target")
    beta = (
        f"target {target}, beta from {finetune['diversity_coef']:g}"
        if target
        else f"beta = {finetune['diversity_coef']:g}"
    )
    extras = [finetune["algorithm"].upper()] if finetune.get("algorithm", "grpo") != "grpo" else []
    extras += [f"seed {finetune['seed']}"] if finetune.get("seed", 0) != 0 else []
    return f"{name} ({', '.join([beta, *extras])})"


def _fmt(m: dict, digits: int = 3) -> str:
    return f"{m['mean']:.{digits}f} [{m['low']:.{digits}f}, {m['high']:.{digits}f}]"


def _signed(d: dict, digits: int = 3) -> str:
    return f"{d['mean']:+.{digits}f} [{d['low']:+.{digits}f}, {d['high']:+.{digits}f}]"


def _excludes_zero(d: dict, direction: str) -> bool:
    return d["low"] > 0 if direction == "higher" else d["high"] < 0


def agreeing_judges(judges: dict[str, dict]) -> list[str]:
    """The held-out judges whose paired difference favours the diversity model, after Holm's correction across all
    of them (each `judges[name]` a `paired_difference`, its direction from HELD_OUT)."""
    from trl_diversity.toolkit.comparison import holm_rejections

    rejected = holm_rejections({name: d["p_value"] for name, d in judges.items()})
    favourable = {name for name, d in judges.items() if (d["mean"] > 0) == (HELD_OUT[name] == "higher")}
    return [name for name in judges if name in rejected and name in favourable]


def analyse(evaluated: dict) -> dict:
    """Every comparison the claims rest on, from the points' per-prompt metrics."""
    by_label = {point.label: entry for point, entry in evaluated.items()}
    family = {name: [e for p, e in evaluated.items() if p.family == name] for name in FAMILIES}
    cfg = sorted(family["cfg"], key=lambda e: e["value"])
    lerp = {e["value"]: e for e in family["lerp"]}
    quality_model, diversity_model = lerp[0.0], lerp[1.0]

    def paired(a, b, metric):
        return paired_difference(a["per_prompt"][metric], b["per_prompt"][metric])

    analysis: dict = {"distillation": {}, "diversity": {}, "interpolation": {}, "fronts": {}}
    # (a) the beta = 0 model against every CFG point: gamma* is the largest gamma whose adherence it matches within
    # the margin stated in advance (the paired CI's lower end above -ADHERENCE_MARGIN).
    for entry in cfg:
        analysis["distillation"][entry["label"]] = {
            "gamma": entry["value"],
            "adherence": paired(quality_model, entry, QUALITY),
            "diversity": paired(quality_model, entry, MINILM),
            "fluency_nll": paired(quality_model, entry, "fluency_nll"),
        }
    # The win the front gaps never test (they look only at shared ranges): beta = 0 against each CFG point on both
    # axes, its diversity differences corrected together (Holm).
    analysis["distillation_diversity_holm"] = rules.holm(
        {label: entry["diversity"] for label, entry in analysis["distillation"].items()}
    )
    matched = [c for c in cfg if analysis["distillation"][c["label"]]["adherence"]["low"] > -ADHERENCE_MARGIN]
    gamma_star = max((c["value"] for c in matched), default=None)
    analysis["gamma_star"] = gamma_star
    star = next((c for c in cfg if c["value"] == gamma_star), cfg[0])

    # (b) the diversity model against the beta = 0 model, and against CFG gamma*.
    for metric in (QUALITY, MINILM, *HELD_OUT, "fluency_nll"):
        analysis["diversity"][metric] = paired(diversity_model, quality_model, metric)
    analysis["diversity_vs_cfg"] = {m: paired(diversity_model, star, m) for m in (QUALITY, MINILM, *HELD_OUT)}
    # The paper's w = 0.5 model against base + CFG.
    if 0.5 in lerp:
        analysis["interpolation"] = {m: paired(lerp[0.5], star, m) for m in (QUALITY, MINILM, *HELD_OUT)}

    # (c) fronts at matched quality, on the training judge and on each held-out judge.
    pairs = [("lerp", "cfg"), ("lerp", "temperature"), ("cfg", "temperature")]
    for metric, direction in {MINILM: "higher", **HELD_OUT}.items():
        sign = 1 if direction == "higher" else -1
        for a, b in pairs:
            per_prompt = {
                name: [
                    {QUALITY: e["per_prompt"][QUALITY], metric: [sign * v for v in e["per_prompt"][metric]]}
                    for e in family[name]
                ]
                for name in (a, b)
            }
            gap = matched_quality_gap(per_prompt[a], per_prompt[b], QUALITY, metric)
            if gap is not None:  # a range narrower than the rule's is no front comparison: shown, never counted
                gap["counted"] = rules.wide_enough(gap)
            if gap is not None and sign < 0:  # report in the metric's own units: a negative self-BLEU gap is better
                gap = {
                    **gap,
                    "mean": -gap["mean"],
                    "low": -gap["high"],
                    "high": -gap["low"],
                    "percentile_low": -gap["percentile_high"],
                    "percentile_high": -gap["percentile_low"],
                    "median": -gap["median"],
                }
            analysis["fronts"][f"{a} vs {b} on {metric}"] = gap
    # Claim (c)'s comparisons (the LERP front against CFG's and temperature's, on MiniLM), corrected together.
    deciding = {
        name: gap
        for name in (f"lerp vs cfg on {MINILM}", f"lerp vs temperature on {MINILM}")
        if (gap := analysis["fronts"].get(name)) is not None and gap["counted"]
    }
    analysis["claim_c_holm"] = {"tested": sorted(deciding), "surviving": sorted(rules.holm(deciding))}
    # Where the fronts share no adherence range, the question becomes: which baseline points does a LERP point
    # dominate (at least as much adherence and MiniLM diversity, by the means), and how firmly (paired CIs)?
    analysis["dominance"] = {}
    for entry in family["cfg"] + family["temperature"]:
        mean = entry["metrics"]
        dominating = [
            e
            for e in family["lerp"]
            if e["metrics"][QUALITY]["mean"] >= mean[QUALITY]["mean"]
            and e["metrics"][MINILM]["mean"] >= mean[MINILM]["mean"]
        ]
        if dominating:
            best = max(dominating, key=lambda e: e["metrics"][MINILM]["mean"])
            analysis["dominance"][entry["label"]] = {
                "by": [e["label"] for e in dominating],
                "strongest": best["label"],
                QUALITY: paired(best, entry, QUALITY),
                MINILM: paired(best, entry, MINILM),
            }
    analysis["labels"] = {
        "star": star["label"],
        "quality": quality_model["label"],
        "diversity": diversity_model["label"],
    }
    analysis["by_label"] = by_label
    return analysis


def claims(analysis: dict) -> list[dict]:
    """The three targets of the evidence issue, each with its measured values and a verdict."""
    rows = []
    gamma_star = analysis["gamma_star"]
    star = analysis["labels"]["star"]
    distill = analysis["distillation"][star]
    nll_ok = distill["fluency_nll"]["low"] <= 0
    verdict = (
        "holds"
        if gamma_star is not None and gamma_star >= 2 and nll_ok
        else ("partly" if gamma_star is not None and gamma_star > 1 else "does not hold")
    )
    surviving = analysis["distillation_diversity_holm"]
    dominated = [
        f"{label} (diversity {_signed(entry['diversity'])})"
        for label, entry in analysis["distillation"].items()
        if entry["adherence"]["low"] > -ADHERENCE_MARGIN and label in surviving and entry["diversity"]["mean"] > 0
    ]
    both_axes = (
        f"it dominates {'; '.join(dominated)}: adherence matched and MiniLM diversity higher after Holm over the "
        f"{len(analysis['distillation'])} CFG points"
        if dominated
        else f"it dominates no CFG point (adherence matched and MiniLM diversity higher after Holm over the "
        f"{len(analysis['distillation'])} CFG points)"
    )
    rows.append(
        {
            "claim": "(a) CFG distillation (beta = 0) matches CFG's adherence at some gamma* >= 2, fluency NLL no "
            "worse, at 1 forward pass per token",
            "measured": f"gamma* = {gamma_star if gamma_star is not None else 'none'} (largest CFG scale whose "
            f"adherence the beta = 0 model matches: paired 95% CI above -{ADHERENCE_MARGIN}); adherence beta=0 - {star}: "
            f"{_signed(distill['adherence'])}; fluency NLL difference {_signed(distill['fluency_nll'], 2)}. On both "
            f"axes, {both_axes}",
            "verdict": verdict,
        }
    )
    diversity = analysis["diversity"]
    reference = analysis["by_label"][analysis["labels"]["quality"]]["metrics"]
    gain = relative(diversity[MINILM], reference[MINILM]["mean"])
    change = relative(diversity[QUALITY], reference[QUALITY]["mean"])
    held_out = agreeing_judges({m: diversity[m] for m in HELD_OUT})
    rows.append(
        {
            "claim": "(b) the diversity model raises MiniLM diversity >= 20% over beta = 0, loses <= 5% adherence, "
            "and the gain shows in a held-out judge (each threshold tested on its 95% CI)",
            "measured": f"MiniLM diversity {percent_ci(gain)} ({_signed(diversity[MINILM])}; +20% "
            f"{'met' if rules.gain_met(gain) else 'not met'} by the CI's lower end), adherence {percent_ci(change)} "
            f"({_signed(diversity[QUALITY])}; the 5% budget {'met' if rules.budget_met(change) else 'not met'} by the "
            f"CI's lower end); held-out judges agreeing (Holm-corrected over {len(HELD_OUT)}): "
            f"{', '.join(held_out) or 'none'} (partitions {_signed(diversity['partitions'], 2)}); diversity "
            f"win rate vs beta = 0: {diversity[MINILM]['win_rate']:.0%} of prompts (paper: 79% of human ratings)",
            "verdict": claim_b_verdict(gain, change, held_out),
        }
    )
    fronts = analysis["fronts"]
    raw_cfg, raw_temperature = fronts.get(f"lerp vs cfg on {MINILM}"), fronts.get(f"lerp vs temperature on {MINILM}")
    holm = analysis["claim_c_holm"]
    wins = [
        name in holm["surviving"] and fronts[name]["mean"] > 0
        for name in (f"lerp vs cfg on {MINILM}", f"lerp vs temperature on {MINILM}")
    ]
    dominance = analysis["dominance"]
    dominated = "; ".join(
        f"{label} by {d['strongest']} (adherence {_signed(d[QUALITY])}, diversity {_signed(d[MINILM])})"
        for label, d in dominance.items()
    )
    claim = (
        "(c) at matched adherence, the LERP front has more MiniLM diversity than the CFG and the temperature fronts "
        f"(BCa CI of the gap above zero over a shared adherence range >= {MIN_SHARED_RANGE}, Holm over the comparisons "
        "that meet it)"
    )
    if not holm["tested"]:
        lerp_range = [e["metrics"][QUALITY]["mean"] for p, e in analysis["by_label"].items() if p.startswith("LERP")]
        rows.append(
            {
                "claim": claim,
                "measured": f"not measurable as set: the LERP points span adherence {min(lerp_range):.3f}-"
                f"{max(lerp_range):.3f}; vs CFG {_gap_text(raw_cfg)}, vs temperature {_gap_text(raw_temperature)}. "
                f"Baseline points a LERP point dominates by the means: {dominated or 'none'}",
                "verdict": "not testable; no shared adherence range meets the range rule",
            }
        )
        return rows
    survivors = ", ".join(holm["surviving"]).replace(f" on {MINILM}", "") or "none"
    rows.append(
        {
            "claim": claim,
            "measured": f"gap vs CFG {_gap_text(raw_cfg)}; gap vs temperature {_gap_text(raw_temperature)}; "
            f"surviving Holm over {len(holm['tested'])}: {survivors} (this dial's comparisons alone; across every "
            "dial, goal (c) of diversity_models.md corrects over all of them)",
            "verdict": "holds" if all(wins) else "partly" if any(wins) else "does not hold",
        }
    )
    return rows


def _gap_text(gap: dict | None) -> str:
    if gap is None:
        return "no shared adherence range"
    low, high = gap["quality_range"]
    narrow = "" if gap["counted"] else f", narrower than {MIN_SHARED_RANGE}: not counted"
    return f"{_signed(gap)} over adherence {low:.3f}-{high:.3f} (p = {gap['p_value']:.3f}{narrow})"


def points_table(evaluated: dict) -> list[str]:
    lines = [
        "| point | adherence ↑ | MiniLM diversity ↑ | base-LM diversity ↑ | partitions ↑ (of k) | distinct-2 ↑ "
        "| self-BLEU ↓ | fluency NLL ↓ | passes / token | tokens / s (load-dependent) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for point, entry in evaluated.items():
        m = entry["metrics"]
        speed = entry.get("tokens_per_second")
        lines.append(
            f"| {point.label} | {_fmt(m[QUALITY])} | {_fmt(m[MINILM])} | {_fmt(m['base_lm_diversity'])} | "
            f"{_fmt(m['partitions'], 2)} | "
            f"{_fmt(m['distinct_2'])} | {_fmt(m['self_bleu'], 1)} | {_fmt(m['fluency_nll'], 2)} | "
            f"{entry['forward_passes_per_token']} | {'' if speed is None else f'{speed:.1f}'} |"
        )
    return lines


def comparisons_table(analysis: dict) -> list[str]:
    lines = ["| comparison (A - B, same prompts) | metric | difference [95% CI] | A better on |", "|---|---|---|---|"]

    def add(name, metric, d, direction="higher"):
        better = d["win_rate"] if direction == "higher" else 1 - d["win_rate"]
        lines.append(f"| {name} | {metric} | {_signed(d, 3)} | {better:.0%} of prompts |")

    labels = analysis["labels"]
    for label, entry in analysis["distillation"].items():
        add(f"beta = 0 - {label}", QUALITY, entry["adherence"])
        add(f"beta = 0 - {label}", MINILM, entry["diversity"])
        add(f"beta = 0 - {label}", "fluency NLL", entry["fluency_nll"], "lower")
    for metric, d in analysis["diversity"].items():
        add(
            "diversity model - beta = 0",
            metric,
            d,
            HELD_OUT.get(metric, "lower" if metric == "fluency_nll" else "higher"),
        )
    for metric, d in analysis["diversity_vs_cfg"].items():
        add(f"diversity model - {labels['star']}", metric, d, HELD_OUT.get(metric, "higher"))
    for metric, d in analysis["interpolation"].items():
        add(f"LERP w=0.5 - {labels['star']}", metric, d, HELD_OUT.get(metric, "higher"))
    return lines


def fronts_table(analysis: dict) -> list[str]:
    lines = [
        "| fronts (A vs B) | diversity judge | mean gap A - B at matched adherence [BCa 95% CI] | percentile CI "
        "(median) | p | shared adherence range | resamples where a front does not span that range (compared at its "
        "end point) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, gap in analysis["fronts"].items():
        pair, metric = name.split(" on ")
        if gap is None:
            lines.append(f"| {pair} | {metric} | no shared range | | | | |")
            continue
        low, high = gap["quality_range"]
        narrow = "" if gap["counted"] else f" (< {MIN_SHARED_RANGE} wide: not counted)"
        lines.append(
            f"| {pair} | {metric} | {_signed(gap)} | [{gap['percentile_low']:+.3f}, {gap['percentile_high']:+.3f}] "
            f"({gap['median']:+.3f}) | {gap['p_value']:.3f} | {low:.3f}-{high:.3f}{narrow} | "
            f"{gap['resamples_outside_range']:.0%} |"
        )
    holm = analysis["claim_c_holm"]
    survivors = ", ".join(holm["surviving"]) or "none"
    return [
        *lines,
        "",
        f"Claim (c) rests on the MiniLM rows of the LERP front against CFG's and temperature's that meet the "
        f"{MIN_SHARED_RANGE} range rule ({len(holm['tested'])} here), corrected together (Holm, family-wise "
        f"{rules.ALPHA}); surviving: {survivors}.",
    ]


def plot_fronts(evaluated: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(19, 5.5))
    for axis, metric, title in (
        (axes[0], MINILM, "MiniLM pairwise diversity (the training reward's judge)"),
        (axes[1], "base_lm_diversity", "base-model hidden-state diversity (held out)"),
        (axes[2], "partitions", "partition count, NoveltyBench distinct_k (held out)"),
    ):
        for family, (name, color, marker) in FAMILIES.items():
            members = sorted(
                ((p, e) for p, e in evaluated.items() if p.family == family),
                key=lambda x: x[1]["metrics"][QUALITY]["mean"],
            )
            if not members:
                continue
            xs = [e["metrics"][QUALITY]["mean"] for _, e in members]
            ys = [e["metrics"][metric]["mean"] for _, e in members]
            xerr = [
                [x - e["metrics"][QUALITY]["low"] for x, (_, e) in zip(xs, members)],
                [e["metrics"][QUALITY]["high"] - x for x, (_, e) in zip(xs, members)],
            ]
            yerr = [
                [y - e["metrics"][metric]["low"] for y, (_, e) in zip(ys, members)],
                [e["metrics"][metric]["high"] - y for y, (_, e) in zip(ys, members)],
            ]
            axis.errorbar(
                xs, ys, xerr=xerr, yerr=yerr, fmt=marker + "-", color=color, capsize=3, alpha=0.85, label=name
            )
            for index, (x, y, (point, _)) in enumerate(zip(xs, ys, members)):
                offset = (5, 4) if index % 2 == 0 else (5, -11)
                axis.annotate(point.label, (x, y), textcoords="offset points", xytext=offset, fontsize=7, color=color)
        axis.set_xlabel("prompt adherence (MiniLM cosine of prompt and completion; higher is better)")
        axis.set_ylabel(f"{metric.replace('_', ' ')} (higher is more diverse)")
        axis.set_title(title, fontsize=10)
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="best")
    figure.suptitle("Quality-diversity on the same eval prompts (means with 95% bootstrap CIs over prompts)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_training(logs: dict, path: Path, label_of=None) -> list[str]:
    """Training curves of each log (`label_of(name, finetune)` names each curve; `finetune_label` by default)."""
    label_of = label_of or finetune_label
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in TRAINING_CURVES if any(k in row for log in logs.values() for row in log["log_history"])]
    figure, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.8), squeeze=False)
    for axis, key in zip(axes[0], keys):
        for name, log in logs.items():
            rows = [row for row in log["log_history"] if key in row]
            label = label_of(name, log["finetune"])
            line = axis.plot([r["step"] for r in rows], [r[key] for r in rows], label=label, alpha=0.8)[0]
            if key == "diversity/pairwise":  # the level a diversity target holds, beside the diversity it measured
                targets = [r for r in log["log_history"] if math.isfinite(r.get("diversity/target", math.nan))]
                if targets:
                    steps, levels = [r["step"] for r in targets], [r["diversity/target"] for r in targets]
                    axis.plot(steps, levels, linestyle="--", color=line.get_color(), label=f"{label}: its target")
                    axis.legend(fontsize=7)
        axis.set_title(key, fontsize=10)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return keys


def training_summary(logs: dict) -> list[str]:
    lines = [
        "| finetune | steps | diversity/pairwise, first 8 steps -> last 8 | distill/divergence, first 8 -> last 8 "
        "| train time |",
        "|---|---|---|---|---|",
    ]
    for name, log in logs.items():
        rows = [r for r in log["log_history"] if "diversity/pairwise" in r]

        def window(key, part, rows=rows):
            values = [r[key] for r in (rows[:8] if part == "first" else rows[-8:]) if key in r]
            return sum(values) / len(values) if values else float("nan")

        runtime = next((r.get("train_runtime") for r in log["log_history"] if "train_runtime" in r), None)
        lines.append(
            f"| {finetune_label(name, log['finetune'])} | {log['finetune']['max_steps']} | "
            f"{window('diversity/pairwise', 'first'):.3f} -> {window('diversity/pairwise', 'last'):.3f} | "
            f"{window('distill/divergence', 'first'):.3f} -> {window('distill/divergence', 'last'):.3f} | "
            f"{'' if runtime is None else f'{runtime / 60:.0f} min'} |"
        )
    return lines


def retrain_notes(logs: dict, command_flags: str) -> list[str]:
    """A finetune trained again for this run's merges (its checkpoint gone): the interior LERP points come from that
    training run, w = 0 and w = 1 from the first, so say how close the two runs were. (Another run's retrain made
    none of this report's points.)"""
    notes = []
    for name, log in logs.items():
        for retrain in [r for r in log.get("retrains", []) if r.get("for_run") == command_flags]:
            if retrain.get("same_curve_as_first"):
                closeness = "its training curve bit-identical to the first run's"
            elif "max_relative_difference" in retrain:
                closeness = (
                    f"its training curve within a relative {retrain['max_relative_difference']:.1e} of the first run's"
                )
            else:
                closeness = (
                    "its training curve not bit-identical to the first run's; that curve was not kept, so how close "
                    "the two runs came cannot be checked"
                )
            minutes = "" if retrain.get("train_runtime") is None else f", {retrain['train_runtime'] / 60:.0f} min"
            notes.append(
                f"- The {name} model was trained again for the interior LERP points (its checkpoint was gone{minutes}), "
                f"{closeness}; w = 0 and w = 1 are the first run's cached points."
            )
    return ["", *notes] if notes else []


def write_report(command_flags, budget, prompts, evaluated, logs, report: Path, summary_file: Path) -> dict:
    """The Markdown report (plots beside it) and `summary_file`; `command_flags` is how reproduce.py was called."""
    results = summary_file.parent
    analysis = analyse(evaluated)
    rows = claims(analysis)
    fronts_png = report.with_name(report.stem + "_fronts.png")
    training_png = report.with_name(report.stem + "_training.png")
    plot_fronts(evaluated, fronts_png)
    curves = plot_training(logs, training_png) if logs else []
    q, d = budget.quality, budget.diversity
    discussion = report.with_name(report.stem + "_discussion.md")  # written by hand, beside the generated report
    lines = [
        f"# Reproduction on SmolLM2-135M-Instruct (`{command_flags}`)",
        "",
        f"Made by `python -m experiments.reproduce {command_flags}`; the cached points and training logs are in "
        f"`{results.relative_to(results.parents[2]) if len(results.parents) > 2 else results}`, and "
        f"`--report_only` rebuilds this page from them.",
        "",
        *(
            [
                f"The reading of these numbers (verdict, diagnosis, the lever search, what next) is in "
                f"[{discussion.name}]({discussion.name}).",
                "",
            ]
            if discussion.is_file()
            else []
        ),
        "## Setup",
        "",
        f"- Eval: the first {len(prompts)} bundled eval prompts (the file interleaves the 12 forms), "
        f"{budget.num_samples} samples each, {budget.max_new_tokens} new tokens, seed 0; every point sees the same "
        "prompts, so comparisons are paired (bootstrap over prompts, 2000 resamples).",
        f"- Finetunes: LoRA r=16 on every linear layer, {q.max_steps} steps of {q.per_device_train_batch_size} "
        f"completions (k = {q.num_generations} per prompt, {q.max_completion_length} tokens), learning rate "
        f"{q.learning_rate:g} (linear decay), teacher CFG {q.guidance_scale:g}, {q.distill_divergence}, seed "
        f"{q.seed}, training prompts only, on TRL's {q.algorithm.upper()}. Quality model: diversity_coef = "
        f"{q.diversity_coef:g}; diversity model: "
        + (
            f"diversity_coef = {d.diversity_coef:g}."
            if d.diversity_target is None
            else f"diversity_target = {d.diversity_target}, the coefficient starting at {d.diversity_coef:g}."
        ),
        f"- Points: CFG gamma in {list(budget.guidance_scales)}, temperature T in {list(budget.temperatures)} "
        f"(T = 1 and gamma = 1 are the same base-model point), LERP w in {list(budget.weights)} (w = 0 is the "
        "quality model, w = 1 the diversity model; interior weights are the exact interpolation of the two LoRA "
        "deltas).",
        "- Judges: adherence and pairwise diversity use MiniLM, the training reward's embedder. Held out from "
        "training: a second embedding space (pairwise 1 - cos of the unguided base model's last hidden states, "
        "mean-pooled over each completion encoded alone; decoder states are anisotropic, so its values are small "
        "and only comparable with each other), the partition count (NoveltyBench's `distinct_k` with its offline "
        "unigram equivalence rule), distinct-2 and self-BLEU. Fluency: per-token NLL under the unguided base model.",
        "",
        "## Claims",
        "",
        "| target | measured (95% paired CIs) | verdict |",
        "|---|---|---|",
        *[f"| {row['claim']} | {row['measured']} | **{row['verdict']}** |" for row in rows],
        "",
        f"![fronts]({fronts_png.name})",
        "",
        "## Every point",
        "",
        *points_table(evaluated),
        "",
        "Means over prompts with 95% bootstrap CIs. Tokens per second are measured on a shared 2-core CPU: compare "
        "them within this table only.",
        "",
        "## Paired comparisons",
        "",
        *comparisons_table(analysis),
        "",
        "## Fronts at matched adherence",
        "",
        "Each family's Pareto front is interpolated linearly in adherence; the gap is averaged over the adherence "
        "range both fronts span (fixed by the point estimate). The CI is the bias-corrected and accelerated (BCa) "
        "bootstrap's: a front is a maximum over noisy points, so its resampled gaps are biased, and the plain "
        "percentile CI and median of the same resamples are shown beside it; p inverts the BCa interval. For "
        "self-BLEU a negative gap means A is more diverse.",
        "",
        *fronts_table(analysis),
        "",
    ]
    if logs:
        lines += ["## Training", "", *training_summary(logs), *retrain_notes(logs, command_flags), ""]
        lines += [f"![training curves]({training_png.name})", ""]
    examples = analysis["by_label"]
    lines += ["## Samples for the first prompt", "", f"Prompt: {prompts[0]}", ""]
    for label in (analysis["labels"]["star"], analysis["labels"]["quality"], analysis["labels"]["diversity"]):
        lines += (
            [f"**{label}**", ""] + [f"- {text.strip()[:200]!r}" for text in examples[label]["examples"][:3]] + [""]
        )
    write_text_atomic(report, "\n".join(lines) + "\n")
    summary = {"claims": rows, "gamma_star": analysis["gamma_star"], "curves": curves}
    write_text_atomic(summary_file, json.dumps(summary, indent=1))
    return summary
