"""Compare finetunes of the reproduction across runs, from its cache only: no model is loaded, nothing is sampled.

Every finetune's point (a LERP end, w = 0 or w = 1) was evaluated on the same eval prompts with the same sampling
seed, so any two are paired by prompt. Two reports:

- `--diversity_models`: every diversity model the cache holds (beta = 15, beta = 50, a diversity target, other
  seeds), each against the beta = 0 model of its own seed, on MiniLM diversity, adherence and the held-out judges,
  with the evidence issue's claim (b) per model; then seed against seed.
- `--algorithms`: RLOO against GRPO, the quality model with the quality model and the diversity model with the
  diversity model, with their training time per step (from the training logs, measured in different runs).

    python -m experiments.compare_finetunes --diversity_models   # docs/results/diversity_models.md
    python -m experiments.compare_finetunes --algorithms         # docs/results/rloo_vs_grpo.md
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from experiments import rules
from experiments.front_gaps import gap_to_front, matched_quality_gap
from experiments.reproduction_report import agreeing_judges
from experiments.rules import MIN_SHARED_RANGE, claim_b_verdict, percent_ci, relative
from experiments.runs import BUDGETS, ROOT, Point, Variant, point_file_stem, point_key
from trl_diversity.toolkit.comparison import paired_difference

QUALITY, MINILM = "adherence", "pairwise_diversity"
# The judges training never saw, and which direction is better.
HELD_OUT = {"base_lm_diversity": "higher", "partitions": "higher", "distinct_2": "higher", "self_bleu": "lower"}
NAMES = {
    QUALITY: "adherence",
    MINILM: "MiniLM diversity",
    "base_lm_diversity": "base-LM diversity",
    "partitions": "partitions",
    "distinct_2": "distinct-2",
    "self_bleu": "self-BLEU",
    "fluency_nll": "fluency NLL",
}
# The prompt set every point is read for ("eval", or "open" with --eval_prompts open).
EVAL_PROMPTS = {"set": "eval"}


@dataclass(frozen=True)
class Run:
    """One diversity model of the comparison (its `reproduce` run is `variant`), judged against the beta = 0 model of
    its own seed and algorithm. A new run is one row of `RUNS`: every table it belongs to reads it from there."""

    name: str
    variant: Variant
    # The front it is the w = 1 end of: a LERP dial (its interior was evaluated: `reproduce` without
    # --endpoints_only) or "entropy control" (the front of the entropy-bonus models). Its gap to that front is zero
    # by construction, so it is not reported.
    front: str | None = None
    seed_of: str | None = None  # the run this one repeats with another training seed


ENTROPY_COEFS = (0.01, 0.03, 0.1)  # experiments/win_runs.sh
RUNS = (
    Run("beta = 15", Variant(), front="LERP beta 0-15"),
    Run("beta = 50", Variant(diversity_coef=50.0), front="LERP beta 0-50"),
    Run("target initial (beta from 15)", Variant(diversity_target="initial"), front="LERP beta 0-target"),
    Run("target initial, rate 0.5", Variant(diversity_target="initial", diversity_target_rate=0.5)),
    Run(
        "target initial*0.85, rate 0.25",
        Variant(diversity_target="initial*0.85", diversity_target_rate=0.25),
    ),
    Run("target initial*0.85, rate 0.5", Variant(diversity_target="initial*0.85", diversity_target_rate=0.5)),
    Run("beta = 15 on RLOO", Variant(algorithm="rloo")),
    Run("beta = 15, forward KL", Variant(distill_divergence="forward_kl"), front="LERP beta 0-15, forward KL"),
    Run("beta = 15, JSD", Variant(distill_divergence="jsd")),
    Run("beta = 15, quality x diversity", Variant(diversity_quality="teacher_likelihood")),
    Run("beta = 50, quality x diversity", Variant(diversity_coef=50.0, diversity_quality="teacher_likelihood")),
    *(
        Run(f"entropy_coef {c:g}, no diversity reward", Variant(entropy_coef=c), front="entropy control")
        for c in ENTROPY_COEFS
    ),
    Run("beta = 15, seed 1", Variant(seed=1), seed_of="beta = 15"),
    Run("beta = 50, seed 1", Variant(diversity_coef=50.0, seed=1), seed_of="beta = 50"),
    Run(
        "target initial, seed 1", Variant(diversity_target="initial", seed=1), seed_of="target initial (beta from 15)"
    ),
    Run(
        "target initial*0.85, rate 0.5, seed 1",
        Variant(diversity_target="initial*0.85", diversity_target_rate=0.5, seed=1),
        seed_of="target initial*0.85, rate 0.5",
    ),
    Run(
        "beta = 15, forward KL, seed 1",
        Variant(distill_divergence="forward_kl", seed=1),
        seed_of="beta = 15, forward KL",
    ),
)
RUN = {run.name: run for run in RUNS}


def point_path(budget_name: str, variant: Variant, point: Point, results: Path, prompt_set: str | None = None) -> Path:
    """Where one evaluated point of a run is cached (on `prompt_set`, the report's prompt set by default)."""
    budget = replace(variant.apply(BUDGETS[budget_name]), eval_prompts=prompt_set or EVAL_PROMPTS["set"])
    return results / "points" / f"{point_file_stem(point)}-{point_key(point, budget, budget.prompts())}.json"


def cached_point(
    budget_name: str, variant: Variant, point: Point, results: Path, prompt_set: str | None = None
) -> dict | None:
    """One evaluated point of a run, from the cache, or None."""
    path = point_path(budget_name, variant, point, results, prompt_set)
    return json.loads(path.read_text()) if path.is_file() else None


def model_point(
    budget_name: str, variant: Variant, which: str, results: Path, prompt_set: str | None = None
) -> dict | None:
    """The cached point of one finetune (`which`: "quality" is w = 0, "diversity" is w = 1), or None."""
    return cached_point(budget_name, variant, Point("lerp", 0.0 if which == "quality" else 1.0), results, prompt_set)


def fronts(budget_name: str, results: Path) -> dict[str, list[dict]]:
    """The baselines' and the dials' points (each complete in the cache): CFG and temperature on the base model, and
    the LERP of beta = 0 with beta = 15, with beta = 50 and with the target model."""
    budget = BUDGETS[budget_name]
    families = {
        "CFG": [Point("cfg", g, guidance_scale=g) for g in budget.guidance_scales],
        "temperature": [Point("temperature", t, temperature=t) for t in budget.temperatures],
    }
    found = {
        name: [cached_point(budget_name, Variant(), p, results) for p in points] for name, points in families.items()
    }
    for run in RUNS:
        if run.front and run.front.startswith("LERP"):
            found[run.front] = [
                cached_point(budget_name, run.variant, Point("lerp", w), results) for w in budget.weights
            ]
    complete = {name: points for name, points in found.items() if all(p is not None for p in points)}
    # TRL's entropy bonus in place of the diversity reward: the beta = 0 model and each entropy_coef's model.
    entropy = [
        model_point(budget_name, run.variant, "diversity", results) for run in RUNS if run.front == "entropy control"
    ]
    if any(p is not None for p in entropy):
        complete["entropy control"] = [model_point(budget_name, Variant(), "quality", results)] + [
            p for p in entropy if p is not None
        ]
    return complete


# The claim each dial comparison decides: against a baseline's front (c), against TRL's entropy bonus (d).
CLAIM_OF = {"CFG": "c", "temperature": "c", "entropy control": "d"}


def dials_section(baselines: dict[str, list[dict]], plot: Path, summary: dict, num_prompts: int) -> list[str]:
    """Every dial on one plot, and each LERP dial against every other family at matched adherence (the CI over a
    range fixed by the point estimate; the share of resamples where a front fell short of it is reported)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from trl_diversity.toolkit.comparison import front

    figure, axes = plt.subplots(figsize=(8, 6))
    for name, family in baselines.items():
        points = sorted((p["metrics"][QUALITY]["mean"], p["metrics"][MINILM]["mean"]) for p in family)
        line = axes.scatter(*zip(*points), label=name, s=25)
        edge = front(points)
        axes.plot(*zip(*edge), color=line.get_facecolor()[0], linewidth=1)
    axes.set_xlabel("prompt adherence (MiniLM cos, prompt vs completion)")
    axes.set_ylabel("MiniLM pairwise diversity")
    axes.set_title(f"Every dial on the same {num_prompts} {EVAL_PROMPTS['set']} prompts (seed 0)")
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(plot, dpi=120)
    plt.close(figure)

    lines = [
        "",
        "## Every dial at matched adherence",
        "",
        f"![every dial]({plot.name})",
        "",
        "MiniLM diversity of each LERP dial's Pareto front over another family's, averaged over the adherence range "
        "both span (fixed by the point estimate), with a paired bias-corrected and accelerated (BCa) bootstrap 95% CI "
        "over prompts; beside it, the plain percentile CI and the bootstrap median of the same resamples, which a "
        "front's end biases (what BCa corrects). 'outside' is the share of resamples in which a front did not reach "
        f"across that range (read at its end point there). A range narrower than {MIN_SHARED_RANGE} is no front "
        "comparison (goal (c)'s terms) and decides no claim. The comparisons against CFG and temperature decide claim "
        "(c), those against TRL's entropy bonus claim (d): each claim's are corrected together (Holm, family-wise "
        f"{rules.ALPHA}; p inverts the BCa interval).",
        "",
        "| dial | against | shared adherence range | MiniLM gap [BCa 95% CI] | percentile CI (median) | p | Holm "
        "| outside |",
        "|---|---|---|---|---|---|---|---|",
    ]
    gaps = {}
    for dial, points in baselines.items():
        if not dial.startswith("LERP"):
            continue
        for other, family in baselines.items():
            if other.startswith("LERP"):
                continue
            gaps[dial, other] = matched_quality_gap(
                [p["per_prompt"] for p in points], [p["per_prompt"] for p in family], QUALITY, MINILM
            )
    families = {
        claim: {pair: gap for pair, gap in gaps.items() if CLAIM_OF[pair[1]] == claim and rules.wide_enough(gap)}
        for claim in ("c", "d")
    }
    surviving = {claim: rules.holm(family) for claim, family in families.items()}
    for (dial, other), gap in gaps.items():
        claim = CLAIM_OF[other]
        counted = (dial, other) in families[claim]
        survives = (dial, other) in surviving[claim]
        summary.setdefault("dials", {})[f"{dial} vs {other}"] = (
            None if gap is None else {**gap, "claim": claim, "counted": counted, "survives_holm": survives}
        )
        if gap is None:
            lines.append(f"| {dial} | {other} | none | | | | | |")
            continue
        low, high = gap["quality_range"]
        width = "" if counted else f" (< {MIN_SHARED_RANGE} wide)"
        size = len(families[claim])
        holm = (
            "not counted" if not counted else f"({claim}) {'survives' if survives else 'does not survive'} (of {size})"
        )
        lines.append(
            f"| {dial} | {other} | {low:.3f}-{high:.3f}{width} | {signed(gap)} | "
            f"[{gap['percentile_low']:+.3f}, {gap['percentile_high']:+.3f}] ({gap['median']:+.3f}) | "
            f"{gap['p_value']:.3f} | {holm} | {gap['resamples_outside_range']:.0%} |"
        )
    if lines[-1] == "|---|---|---|---|---|---|---|---|":  # no LERP dial's interior was evaluated on this prompt set
        lines[-3:] = [
            "",
            "No merge dial was evaluated on these prompts (only the finetunes themselves): nothing to compare.",
        ]
        return lines
    for claim, family in families.items():
        names = [f"{dial} vs {other}" for dial, other in family if (dial, other) in surviving[claim]]
        plain = rules.holm({pair: {"p_value": gap["percentile_p_value"]} for pair, gap in family.items()})
        summary.setdefault("holm", {})[claim] = {
            "tested": [f"{dial} vs {other}" for dial, other in family],
            "surviving": names,
            "surviving_on_percentile_p_values": [
                f"{dial} vs {other}" for dial, other in family if (dial, other) in plain
            ],
        }
        p_values = ", ".join(f"{gap['percentile_p_value']:.3f}" for gap in family.values())
        lines += [
            "",
            f"Claim ({claim}): {len(family)} comparisons meet the {MIN_SHARED_RANGE} range rule; "
            f"{len(names)} survive Holm's correction over them"
            + (f": {'; '.join(names)}." if names else ".")
            + f" On the plain percentile bootstrap's p-values ({p_values}), {len(plain)} would.",
        ]
    changed = [
        f"{dial} vs {other} (percentile [{gap['percentile_low']:+.3f}, {gap['percentile_high']:+.3f}], BCa "
        f"[{gap['low']:+.3f}, {gap['high']:+.3f}])"
        for (dial, other), gap in gaps.items()
        if gap is not None
        and (gap["low"] > 0 or gap["high"] < 0) != (gap["percentile_low"] > 0 or gap["percentile_high"] < 0)
    ]
    lines += [
        "",
        "What BCa changes: the CIs that exclude zero under one interval and not the other: "
        + ("; ".join(changed) if changed else "none")
        + ".",
    ]
    return lines


def training_log(budget_name: str, variant: Variant, which: str, results: Path) -> dict | None:
    finetune = getattr(variant.apply(BUDGETS[budget_name]), which)
    path = results / "training" / f"{finetune.name}-{finetune.key()}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def seconds_per_step(log: dict | None) -> float | None:
    if log is None:
        return None
    runtime = next((row["train_runtime"] for row in log["log_history"] if "train_runtime" in row), None)
    return None if runtime is None else runtime / log["finetune"]["max_steps"]


def signed(d: dict, digits: int = 3) -> str:
    return f"{d['mean']:+.{digits}f} [{d['low']:+.{digits}f}, {d['high']:+.{digits}f}]"


def diversity_claim(model: dict, reference: dict) -> tuple[list[str], str, dict]:
    """Claim (b) for one diversity model against its beta = 0 model: the table cells, the verdict, the numbers."""
    diversity = paired_difference(model["per_prompt"][MINILM], reference["per_prompt"][MINILM])
    adherence = paired_difference(model["per_prompt"][QUALITY], reference["per_prompt"][QUALITY])
    gain = relative(diversity, reference["metrics"][MINILM]["mean"])
    change = relative(adherence, reference["metrics"][QUALITY]["mean"])
    judges = {name: paired_difference(model["per_prompt"][name], reference["per_prompt"][name]) for name in HELD_OUT}
    agreeing = [NAMES[name] for name in agreeing_judges(judges)]
    verdict = claim_b_verdict(gain, change, agreeing)
    parts = ["yes" if met else "no" for met in (rules.gain_met(gain), rules.budget_met(change), bool(agreeing))]
    cells = [
        f"{percent_ci(gain)} ({signed(diversity)})",
        f"{percent_ci(change)} ({signed(adherence)})",
        *(signed(judges[name], 3 if name != "self_bleu" else 2) for name in HELD_OUT),
        ", ".join(agreeing) or "none",
        f"{diversity['win_rate']:.0%}",
        " / ".join(parts),
    ]
    numbers = {
        "diversity_gain": gain["mean"],
        "diversity_gain_ci": [gain["low"], gain["high"]],
        "adherence_change": change["mean"],
        "adherence_change_ci": [change["low"], change["high"]],
        "diversity_p_value": diversity["p_value"],
        "agreeing_judges": agreeing,
        "gain_met": rules.gain_met(gain),
        "budget_met": rules.budget_met(change),
        "verdict": verdict,
    }
    return cells, "**holds**" if verdict == "holds" else verdict, numbers


def claim_b_rule() -> str:
    return (
        f"Claim (b), each part tested on its 95% CI: the MiniLM gain over beta = 0 is met when its CI's lower end is "
        f"at least +{rules.MIN_DIVERSITY_GAIN:.0%}; the adherence budget when the lower end of the adherence change's "
        f"CI stays within -{rules.MAX_ADHERENCE_LOSS:.0%} (non-inferiority at a 5% margin, as claim (a) is at "
        f"{rules.ADHERENCE_MARGIN}); a held-out judge agrees when its paired difference is significant in the better "
        "direction after Holm's correction over the four judges. Relative CIs are the paired CI over the beta = 0 "
        "model's mean. Holds: all three; partly: the gain's CI above zero and the +20% or the budget met; else does "
        "not hold."
    )


def diversity_models_report(budget_name: str, results: Path, plot: Path) -> tuple[str, dict]:
    num_prompts = len(replace(BUDGETS[budget_name], eval_prompts=EVAL_PROMPTS["set"]).prompts())
    header = (
        "| diversity model | MiniLM diversity vs beta = 0 [95% CI] | adherence vs beta = 0 [95% CI] | "
        + " | ".join(NAMES[n] for n in HELD_OUT)
        + " | held-out judges agreeing | MiniLM win rate | met: +20% / budget / judge | claim (b) |"
    )
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    summary, missing = {}, []
    for run in RUNS:
        name, variant = run.name, run.variant
        model = model_point(budget_name, variant, "diversity", results)
        reference = model_point(budget_name, variant, "quality", results)
        if model is None or reference is None:
            missing.append(name)
            continue
        cells, verdict, numbers = diversity_claim(model, reference)
        seed = variant.seed or 0
        reference_name = "beta = 0" + (" on RLOO" if variant.algorithm == "rloo" else "")
        lines.append(f"| {name} (vs {reference_name}, seed {seed}) | " + " | ".join(cells) + f" | {verdict} |")
        log = training_log(budget_name, variant, "diversity", results)
        coefs = [row["diversity/coef"] for row in (log or {}).get("log_history", []) if "diversity/coef" in row]
        if coefs:
            numbers["coef_first_last_max"] = [coefs[0], coefs[-1], max(coefs)]
        numbers["seconds_per_step"] = seconds_per_step(log)
        summary[name] = numbers
    text = [
        "Each diversity model's w = 1 point against the beta = 0 model (w = 0) of the same training seed, on the "
        f"same {num_prompts} {EVAL_PROMPTS['set']} prompts and sampling seed: paired differences with 95% "
        f"bootstrap CIs over prompts. {claim_b_rule()}",
        "",
        *lines,
    ]
    if missing:
        text += ["", f"Not in the cache (not run, or not finished): {', '.join(missing)}."]
    # A single model has no front of its own: how much more diverse is it than each front at its own adherence?
    baselines = fronts(budget_name, results)
    per_model = {}
    for run in RUNS:
        model = model_point(budget_name, run.variant, "diversity", results)
        if model is None:
            continue
        per_model[run.name] = (model, {})
        for front_name, family in baselines.items():
            if front_name != run.front:  # the model is that dial's end: the gap is zero by construction
                per_model[run.name][1][front_name] = gap_to_front(
                    model["per_prompt"], [p["per_prompt"] for p in family], QUALITY, MINILM
                )
    tested = {(name, f): gap for name, (_, gaps) in per_model.items() for f, gap in gaps.items() if gap is not None}
    surviving = rules.holm(tested)
    excluding = [key for key, gap in tested.items() if gap["low"] > 0 or gap["high"] < 0]
    gap_lines = []
    for name, (model, gaps) in per_model.items():
        cells = []
        for front_name in baselines:
            gap = gaps.get(front_name, "own")
            if gap == "own":
                cells.append("its own dial")
            elif gap is None:
                cells.append("outside its adherence range")
            else:
                cells.append(f"**{signed(gap)}**" if (name, front_name) in surviving else signed(gap))
        summary.setdefault(name, {})["minilm_over_front_at_own_adherence"] = {
            f: None if g is None else {**g, "survives_holm": (name, f) in surviving} for f, g in gaps.items()
        }
        gap_lines.append(f"| {name} ({model['metrics'][QUALITY]['mean']:.3f}) | " + " | ".join(cells) + " |")
    summary["gaps_to_fronts_holm"] = {
        "tested": len(tested),
        "ci_excluding_zero": len(excluding),
        "surviving": sorted(f"{name} vs {f}" for name, f in surviving),
    }
    if gap_lines:
        header = "| model (its adherence) | " + " | ".join(f"vs {name} front" for name in baselines) + " |"
        against = {f: sum(1 for _, g in surviving if g == f) for f in baselines if any(g == f for _, g in surviving)}
        text += [
            "",
            "MiniLM diversity of each diversity model over each front at the model's own adherence (the front is "
            "linearly interpolated between its Pareto points; paired BCa bootstrap over prompts, 95% CI). Above zero: "
            "the model is more diverse than what that dial offers at the same adherence. In bold: the gaps that "
            f"survive Holm's correction over all {len(tested)} of this table.",
            "",
            header,
            "|" + "---|" * (header.count("|") - 1),
            *gap_lines,
            "",
            f"{len(excluding)} of the {len(tested)} CIs exclude zero; {len(surviving)} survive Holm's correction over "
            f"the {len(tested)}"
            + (": " + ", ".join(f"{n} against the {f} front" for f, n in against.items()) if against else "")
            + ".",
        ]
    # Does a target beat a fixed beta? The target model against the beta = 0-beta = 50 dial of its own seed (the
    # same beta = 0 model at w = 0), at the target model's adherence.
    same_seed, same_seed_rows = {}, []
    for run in RUNS:
        if run.variant.diversity_target is None:
            continue
        seed = run.variant.seed or 0
        target = model_point(budget_name, run.variant, "diversity", results)
        dial = [
            cached_point(budget_name, Variant(diversity_coef=50.0, seed=run.variant.seed), Point("lerp", w), results)
            for w in BUDGETS[budget_name].weights
        ]
        if target is None or any(p is None for p in dial):
            continue
        for metric in (MINILM, "base_lm_diversity"):
            same_seed[run.name, metric] = gap_to_front(
                target["per_prompt"], [p["per_prompt"] for p in dial], QUALITY, metric
            )
        same_seed_rows.append((run, seed, target))
    if same_seed_rows:
        tested = {key: gap for key, gap in same_seed.items() if gap is not None}
        surviving = rules.holm(tested)
        lines = []
        for run, seed, target in same_seed_rows:
            cells = []
            for metric in (MINILM, "base_lm_diversity"):
                gap = same_seed[run.name, metric]
                summary.setdefault(f"{run.name} vs beta 0-50 dial, seed {seed}", {})[metric] = gap
                text_gap = "outside its adherence range" if gap is None else signed(gap)
                cells.append(f"**{text_gap}**" if (run.name, metric) in surviving else text_gap)
            lines.append(
                f"| {run.name} | {seed} | {target['metrics'][QUALITY]['mean']:.3f} | " + " | ".join(cells) + " |"
            )
        text += [
            "",
            "The target model against the `beta = 0`-`beta = 50` merge dial of the same training seed, at the target "
            "model's adherence (paired BCa bootstrap over prompts, 95% CI; above zero: the target model is more diverse "
            f"than the fixed-beta dial offers there). Of the {len(tested)} gaps, {len(surviving)} survive Holm's "
            f"correction over them{' (in bold)' if surviving else ''}.",
            "",
            "| target model | seed | its adherence | MiniLM diversity over the dial | base-LM diversity over the dial |",
            "|---|---|---|---|---|",
            *lines,
        ]
    dials_plot = plot.with_name(plot.stem.replace("_training", "") + "_dials.png")
    text += dials_section(baselines, dials_plot, summary, num_prompts)
    # Training curves: the on-policy diversity of the seed-0 GRPO models with a dial or a target, and the target
    # models' coefficient.
    logs = {"quality": training_log(budget_name, Variant(), "quality", results)}
    for run in RUNS:
        if run.seed_of is None and run.variant.algorithm is None and (run.front or "").startswith("LERP"):
            logs[run.name] = training_log(budget_name, run.variant, "diversity", results)
        elif run.seed_of is None and run.variant.diversity_target is not None:
            logs[run.name] = training_log(budget_name, run.variant, "diversity", results)
    logs = {name: log for name, log in logs.items() if log is not None}
    if logs:
        from experiments.reproduction_report import plot_training

        plotted = plot_training(logs, plot, label_of=lambda name, finetune: name)  # the runs' names say it all
        text += ["", f"![training]({plot.name})", "", f"Curves per training step: {', '.join(plotted)}."]
    # The same model across training seeds: how much of a difference the seed alone makes.
    seed_lines = []
    pairs = [(("beta = 0, seed 0", Variant()), ("beta = 0, seed 1", Variant(seed=1)))]
    pairs += [
        ((f"{RUN[r.seed_of].name}, seed 0", RUN[r.seed_of].variant), (r.name, r.variant)) for r in RUNS if r.seed_of
    ]
    for (name, variant), (other_name, other) in pairs:
        which = "quality" if name.startswith("beta = 0") else "diversity"
        a, b = model_point(budget_name, other, which, results), model_point(budget_name, variant, which, results)
        if a is None or b is None:
            continue
        cells = [signed(paired_difference(a["per_prompt"][m], b["per_prompt"][m])) for m in (QUALITY, MINILM)]
        seed_lines.append(f"| {other_name} - {name} | {cells[0]} | {cells[1]} |")
    if seed_lines:
        text += [
            "",
            "Seed against seed (the same settings, another training seed):",
            "",
            "| difference | adherence | MiniLM diversity |",
            "|---|---|---|",
            *seed_lines,
        ]
    text += controller_section(budget_name, results, summary)
    text += ["", *compute_table(results), "", *lever_search_compute(), "", *evaluation_compute(budget_name, results)]
    if EVAL_PROMPTS["set"] == "eval":
        claim_a = claim_a_section(budget_name, results, summary)
        goals = goals_table(budget_name, results, summary)
        summary["goals"] = goals
        text = [*goals_lines(goals), "", *claim_a, "", "## Claim (b) per diversity model", "", *text]
    return "\n".join(text), summary


# A controller "reached" its target once the mean of the last few batches' diversity came this close to it (relative):
# one batch's mean diversity is too noisy (about 15% of the mean on 8 prompts x 4 samples) to say it alone.
TRACKING_WINDOW, TRACKING_TOLERANCE = 5, 0.05


def controller_tracking(log: dict) -> dict | None:
    """How well a diversity target was held, from a training log (None without a target): the generation batches it
    took until the rolling mean of the measured diversity, over batches measured after the target was set, came within
    5% of it (None: never); the share of the second half's rolling means within 5%; and the mean |measured - target|
    and mean (measured - target) over the second half of the batches. (An "initial" target starts where the policy is,
    so its first windows are within 5% before the controller has done anything: the second half is the test.)"""
    rows = [r for r in log["log_history"] if "diversity/pairwise" in r and "diversity/coef" in r]
    targeted = [(i, r) for i, r in enumerate(rows) if r.get("diversity/target") is not None]
    if not targeted:
        return None
    target = targeted[0][1]["diversity/target"]
    measured = [r["diversity/pairwise"] for r in rows]
    first = targeted[0][0]

    def within(index: int) -> bool:
        window = measured[index - TRACKING_WINDOW + 1 : index + 1]
        return abs(sum(window) / len(window) - target) <= TRACKING_TOLERANCE * target

    windows = range(first + TRACKING_WINDOW - 1, len(measured))
    reached = next((index + 1 for index in windows if within(index)), None)
    second_half = measured[len(measured) // 2 :]
    mean_error = sum(x - target for x in second_half) / len(second_half)
    # One batch has no spread to measure (a --budget small run logs two): no CI then.
    half_width = (
        1.96 * statistics.stdev(second_half) / math.sqrt(len(second_half)) if len(second_half) > 1 else math.nan
    )
    late_windows = [index for index in windows if index >= len(measured) // 2]
    return {
        "target": target,
        "target_set_at": targeted[0][0] + 1,
        "batches": len(rows),
        "batches_to_target": reached,
        "share_within_second_half": sum(map(within, late_windows)) / len(late_windows) if late_windows else None,
        "mean_abs_error_second_half": sum(abs(x - target) for x in second_half) / len(second_half),
        "mean_error_second_half": mean_error,
        # Batches are treated as independent (the policy drifts, so this CI is, if anything, too narrow).
        "mean_error_second_half_ci": [mean_error - half_width, mean_error + half_width],
        "coef_first": rows[0]["diversity/coef"],
        "coef_last": rows[-1]["diversity/coef"],
    }


def controller_section(budget_name: str, results: Path, summary: dict) -> list[str]:
    """The diversity target's controller, per run that had one (issue #23: does it reach its target and hold it?)."""
    lines = []
    for run in RUNS:
        if run.variant.diversity_target is None:
            continue
        name, variant = run.name if run.seed_of else f"{run.name}, seed 0", run.variant
        log = training_log(budget_name, variant, "diversity", results)
        tracking = None if log is None else controller_tracking(log)
        if tracking is None:
            continue
        summary.setdefault("controller", {})[name] = tracking
        reached = tracking["batches_to_target"]
        lines.append(
            f"| {name} | {tracking['target']:.3f} (set at batch {tracking['target_set_at']}) | "
            f"{'never' if reached is None else reached} of {tracking['batches']} | "
            f"{tracking['share_within_second_half']:.0%} | "
            f"{tracking['mean_abs_error_second_half']:.3f} | {tracking['mean_error_second_half']:+.3f} "
            f"[{tracking['mean_error_second_half_ci'][0]:+.3f}, {tracking['mean_error_second_half_ci'][1]:+.3f}] | "
            f"{tracking['coef_first']:g} -> {tracking['coef_last']:.1f} |"
        )
    if not lines:
        return []
    return [
        "",
        f"The diversity target's controller, per run: the generation batches until the mean diversity of the last "
        f"{TRACKING_WINDOW} batches (all measured after the target was set) came within {TRACKING_TOLERANCE:.0%} of "
        "the target, the share of the second half's such means within it, and the error over the second half of the "
        "run (per batch, MiniLM pairwise diversity). An 'initial' target starts where the policy is, so reaching it "
        "early means little; holding it through the second half is the test. One batch's mean diversity varies by "
        "about 0.1 around its level, so even a perfect controller keeps few 5-batch means within 5%: the mean error "
        "over the second half, with its 95% CI (batches taken as independent), says whether the target was held on "
        "average.",
        "",
        "| run | target | batches to target | 2nd half within 5% | mean abs error, 2nd half | mean error, 2nd half [95% CI] "
        "| coefficient |",
        "|---|---|---|---|---|---|---|",
        *lines,
    ]


def other_levers(finetune: dict) -> str:
    """The settings of a finetune that differ from the paper's (reverse KL, no entropy bonus, a plain diversity
    reward) and from the controller's default gain, in the config's words."""
    levers = []
    if finetune.get("distill_divergence", "reverse_kl") != "reverse_kl":
        levers.append(f"distill_divergence={finetune['distill_divergence']}")
    if finetune.get("entropy_coef"):
        levers.append(f"entropy_coef={finetune['entropy_coef']:g}")
    if finetune.get("diversity_quality", "none") != "none":
        levers.append(f"diversity_quality={finetune['diversity_quality']}")
    if finetune.get("diversity_target_rate", 0.1) != 0.1:
        levers.append(f"diversity_target_rate={finetune['diversity_target_rate']:g}")
    return ", ".join(levers)


def compute_table(results: Path) -> list[str]:
    """Every finetune the cache holds, with its training time: each run is reported, whichever table it feeds."""
    lines = [
        "Compute: every finetune in the cache, each training run of it (wall time of `train()` on this project's "
        "2-core CPU machines, measured under whatever else the machine ran; blank where a run resumed from a "
        "checkpoint, so its time is not the whole run's).",
        "",
        "| finetune | algorithm | diversity_coef | diversity_target | other levers | seed | steps | train min "
        "| s / step |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    rows = []
    for path in sorted((results / "training").glob("*.json")):
        log = json.loads(path.read_text())
        finetune = log["finetune"]
        steps = finetune["max_steps"]
        runs = [(finetune["name"], seconds_per_step(log))]
        # A finetune trained again for merges (its checkpoint gone): its own row, and whether it was the same model.
        for retrain in log.get("retrains", []):
            same = {True: "bit-identical curve", False: "a curve not bit-identical"}.get(
                retrain.get("same_curve_as_first"), "curve not compared"
            )
            if retrain.get("same_curve_as_first") is False and "max_relative_difference" in retrain:
                same = f"its curve within {retrain['max_relative_difference']:.0e} relative"
            elif retrain.get("same_curve_as_first") is False:
                same += "; no curve kept, so how close it came cannot be checked"
            runtime = None if retrain.get("resumed") else retrain.get("train_runtime")
            runs.append(
                (f"{finetune['name']} again, for merges ({same})", None if runtime is None else runtime / steps)
            )
        for name, step in runs:
            cells = (name, finetune.get("algorithm") or "grpo", f"{finetune['diversity_coef']:g}")
            cells += (finetune.get("diversity_target") or "", other_levers(finetune))
            cells += (str(finetune.get("seed", 0)), str(steps))
            minutes = None if step is None else step * steps / 60
            cells += ("" if step is None else f"{minutes:.1f}", "" if step is None else f"{step:.1f}")
            # Seed, algorithm, finetune, its settings, then its first run before its retrains.
            order = (
                int(finetune.get("seed", 0)),
                cells[1],
                finetune["name"],
                float(cells[2]),
                cells[3],
                cells[4],
                len(rows),
            )
            rows.append((order, cells, minutes or 0.0))
    rows.sort(key=lambda row: row[0])
    lines += ["| " + " | ".join(cells) + " |" for _, cells, _ in rows]
    total = sum(minutes for _, _, minutes in rows)
    return [*lines, "", f"{len(rows)} training runs, {total:.0f} min of training in all."]


def claim_a_section(budget_name: str, results: Path, summary: dict) -> list[str]:
    """Claim (a) on each training seed: the beta = 0 model against every CFG point, on both axes (adherence and
    MiniLM diversity) and on fluency NLL. The front gaps look only at shared ranges, so they never ask whether the
    distilled model beats a CFG point outright: here each pair is compared directly."""
    budget = BUDGETS[budget_name]
    cfg = {
        g: cached_point(budget_name, Variant(), Point("cfg", g, guidance_scale=g), results)
        for g in budget.guidance_scales
    }
    if any(point is None for point in cfg.values()):
        return []
    rows = {}
    for seed in (0, 1):
        model = model_point(budget_name, Variant(seed=seed) if seed else Variant(), "quality", results)
        if model is None:
            continue
        for gamma, point in cfg.items():
            rows[seed, gamma] = {
                metric: paired_difference(model["per_prompt"][metric], point["per_prompt"][metric])
                for metric in (QUALITY, MINILM, "fluency_nll")
            }
    surviving = rules.holm({key: row[MINILM] for key, row in rows.items()})
    lines = []
    claim = summary.setdefault("claim_a", {})
    for (seed, gamma), row in rows.items():
        adherence, diversity, nll = row[QUALITY], row[MINILM], row["fluency_nll"]
        non_inferior = adherence["low"] > -rules.ADHERENCE_MARGIN
        more_diverse = (seed, gamma) in surviving and diversity["mean"] > 0
        less_diverse = (seed, gamma) in surviving and diversity["mean"] < 0
        claim[f"seed {seed} vs CFG {gamma:g}"] = {
            "adherence": adherence,
            "diversity": diversity,
            "fluency_nll": nll,
            "non_inferior": non_inferior,
            "diversity_survives_holm": (seed, gamma) in surviving,
            "dominates": non_inferior and more_diverse,
        }
        lines.append(
            f"| {seed} | CFG {gamma:g} | {signed(adherence)} | {'yes' if non_inferior else 'no'} | "
            f"{signed(diversity)} | {diversity['p_value']:.3f} | "
            f"{'higher' if more_diverse else 'lower' if less_diverse else 'no difference shown'} | "
            f"{signed(nll, 2)} | {'**yes**' if non_inferior and more_diverse else 'no'} |"
        )
    for seed in sorted({seed for seed, _ in rows}):
        gammas = [g for (s, g) in rows if s == seed and claim[f"seed {s} vs CFG {g:g}"]["non_inferior"]]
        summary.setdefault("gamma_star", {})[f"seed {seed}"] = max(gammas, default=None)
    return [
        "## Claim (a) on both seeds: the beta = 0 model against every CFG point",
        "",
        "The distilled model (`beta = 0`, w = 0, one forward pass per token) of each training seed against each CFG "
        "point on the base model (two passes per token), on the same prompts: paired differences with 95% bootstrap "
        f"CIs. Adherence is matched when the CI's lower end lies above -{rules.ADHERENCE_MARGIN} (claim (a)'s "
        "non-inferiority margin, stated in advance); gamma* is the largest CFG scale matched so. MiniLM diversity: "
        f"the {len(rows)} differences are corrected together (Holm). beta = 0 dominates a CFG point when it matches "
        "its adherence and is more diverse after Holm.",
        "",
        "| seed | CFG point | adherence beta = 0 - CFG [95% CI] | matched (> -0.02) | MiniLM diversity beta = 0 - CFG "
        "[95% CI] | p | diversity after Holm | fluency NLL beta = 0 - CFG | dominates |",
        "|---|---|---|---|---|---|---|---|---|",
        *lines,
    ]


GOALS = {
    "a": "(a) the distilled model (`beta = 0`) matches CFG's adherence at some gamma* >= 2, fluency NLL no worse, at "
    "one forward pass per token, on both seeds",
    "b": "(b) +20% MiniLM diversity over `beta = 0` at <= 5% adherence loss, a held-out judge agreeing (Holm), both "
    "seeds; each part tested on its CI",
    "c": f"(c) a LERP dial above CFG's and temperature's fronts at matched adherence, over >= {MIN_SHARED_RANGE}",
    "d": "(d) a LERP dial above TRL's entropy-control front at matched adherence",
    "e": "(e) the gains hold on prompts of another kind (48 short open questions)",
}


def _gap_cell(name: str, gap: dict) -> str:
    low, high = gap["quality_range"]
    return f"{name} {signed(gap)} on {low:.3f}-{high:.3f}"


def goals_table(budget_name: str, results: Path, summary: dict) -> list[dict]:
    """The goals of #23, each with its verdict by the rules of `experiments.rules` and the numbers it rests on, from
    this report's summary (and the open questions' points, for (e))."""
    goals = []
    # (a)
    claim_a = summary.get("claim_a", {})
    seeds = sorted({key.split(" vs ")[0] for key in claim_a})
    stars = summary.get("gamma_star", {})
    parts, ok = [], []
    for seed in seeds:
        star = stars.get(seed)
        row = claim_a.get(f"{seed} vs CFG {star:g}") if star is not None else None
        nll_ok = row is not None and row["fluency_nll"]["low"] <= 0
        ok.append("holds" if star is not None and star >= 2 and nll_ok else "partly" if star and star > 1 else "no")
        if row is not None:
            parts.append(
                f"{seed}: gamma* = {star:g}, adherence {signed(row['adherence'])}, fluency NLL "
                f"{signed(row['fluency_nll'], 2)}"
            )
    dominated = [key for key, row in claim_a.items() if row["dominates"]]
    by_means = [
        key
        for key, row in claim_a.items()
        if row["adherence"]["mean"] >= 0 and row["diversity"]["mean"] > 0 and not row["dominates"]
    ]
    outright = (
        "beta = 0 dominates (adherence matched, MiniLM diversity higher after Holm over "
        f"{len(claim_a)}): " + "; ".join(f"{k} (diversity {signed(claim_a[k]['diversity'])})" for k in dominated)
        if dominated
        else f"no CFG point is dominated after Holm over {len(claim_a)}"
    )
    if by_means:
        outright += "; ahead on both axes by the means only: " + "; ".join(
            f"{k} (adherence {signed(claim_a[k]['adherence'])}, diversity {signed(claim_a[k]['diversity'])})"
            for k in by_means
        )
    verdict = (
        "holds"
        if ok and all(v == "holds" for v in ok)
        else "partly"
        if any(v != "no" for v in ok)
        else "does not hold"
    )
    goals.append({"goal": GOALS["a"], "verdict": verdict, "numbers": "; ".join(parts) + f". On both axes: {outright}"})

    # (b)
    models = {name: numbers for name, numbers in summary.items() if isinstance(numbers, dict) and "verdict" in numbers}

    def described(name: str) -> str:
        n = models[name]
        gain = {"mean": n["diversity_gain"], "low": n["diversity_gain_ci"][0], "high": n["diversity_gain_ci"][1]}
        change = {
            "mean": n["adherence_change"],
            "low": n["adherence_change_ci"][0],
            "high": n["adherence_change_ci"][1],
        }
        return f"{name} {percent_ci(gain)} at {percent_ci(change)}"

    twins = {run.name: run.seed_of for run in RUNS if run.seed_of}
    holding = [
        name
        for name, n in models.items()
        if n["verdict"] == "holds"
        and all(models.get(t, {}).get("verdict", "holds") == "holds" for t, of in twins.items() if of == name)
        and name not in twins
    ]
    gained = [name for name, n in models.items() if n["gain_met"]]
    budgeted = [name for name, n in models.items() if n["budget_met"] and n["diversity_gain_ci"][0] > 0]
    by_points = [
        name
        for name, n in models.items()
        if n["adherence_change"] >= -rules.MAX_ADHERENCE_LOSS and not n["budget_met"]
    ]
    numbers = [
        f"+20% met by the CI: {'; '.join(map(described, gained)) or 'no model'}",
        f"within the budget by the CI, with a real gain: {'; '.join(map(described, budgeted)) or 'no model'}",
    ]
    if by_points:
        numbers.append(
            "within 5% by the point estimate only, the CI reaching past -5%: " + "; ".join(map(described, by_points))
        )
    goals.append(
        {
            "goal": GOALS["b"],
            "verdict": "holds" if holding else "does not hold",
            "numbers": ". ".join(part[0].upper() + part[1:] for part in numbers),
        }
    )

    # (c) and (d)
    dials = {name: gap for name, gap in summary.get("dials", {}).items() if gap is not None}
    for claim in ("c", "d"):
        counted = {name: gap for name, gap in dials.items() if gap["claim"] == claim and gap["counted"]}
        above = {name: gap for name, gap in counted.items() if gap["survives_holm"] and gap["mean"] > 0}
        below = {name: gap for name, gap in counted.items() if gap["survives_holm"] and gap["mean"] < 0}
        rest = {name: gap for name, gap in counted.items() if name not in above and name not in below}
        if claim == "c":
            dial_of = {}
            for name in above:
                dial_of.setdefault(name.split(" vs ")[0], set()).add(name.split(" vs ")[1])
            verdict = (
                "holds"
                if any({"CFG", "temperature"} <= against for against in dial_of.values())
                else "partly"
                if above
                else "does not hold"
            )
        else:
            verdict = "holds" if above else "does not hold"
        text = [f"Holm over the {len(counted)} comparisons that meet the {MIN_SHARED_RANGE} range rule"]
        if above:
            text.append("above, surviving: " + "; ".join(_gap_cell(n, g) for n, g in above.items()))
        if below:
            text.append("below, surviving: " + "; ".join(_gap_cell(n, g) for n, g in below.items()))
        if rest:
            text.append("no difference after Holm: " + "; ".join(_gap_cell(n, g) for n, g in rest.items()))
        plain = summary.get("holm", {}).get(claim, {}).get("surviving_on_percentile_p_values")
        if plain is not None:
            text.append(
                f"on the plain percentile bootstrap's p-values, {len(plain)} would survive"
                + (f" ({'; '.join(plain)})" if plain else "")
            )
        goals.append({"goal": GOALS[claim], "verdict": verdict, "numbers": "; ".join(text)})

    # (e)
    open_claims, not_judged = {}, []
    for run in RUNS:
        if run.name not in models:
            continue
        model = model_point(budget_name, run.variant, "diversity", results, "open")
        reference = model_point(budget_name, run.variant, "quality", results, "open")
        if model is None or reference is None:
            not_judged.append(run.name)
            continue
        open_claims[run.name] = diversity_claim(model, reference)[2]
    goals.append(open_questions_goal(open_claims, models, not_judged))
    return goals


def open_questions_goal(open_claims: dict[str, dict], models: dict[str, dict], not_judged: list[str]) -> dict:
    """Goal (e): of the models with a real gain on the eval prompts (`models`: their claim-(b) numbers there), how many
    keep one on the open questions (`open_claims`: the same numbers there), after Holm."""
    # Only the models with a gain to keep decide (e), so only they form Holm's family: a model judged there without
    # one would make the correction harsher for a question it does not ask.
    real = [name for name in open_claims if models[name]["diversity_gain_ci"][0] > 0]
    surviving = rules.holm({name: {"p_value": open_claims[name]["diversity_p_value"]} for name in real})
    kept = [name for name in real if name in surviving and open_claims[name]["diversity_gain"] > 0]
    verdict = "holds" if real and len(kept) == len(real) else "partly" if kept else "does not hold"

    def pair(name: str) -> str:
        n, e = open_claims[name], models[name]
        mark = "" if name in surviving else ", not after Holm" if name in real else ", not deciding"
        return (
            f"{name} {n['diversity_gain']:+.1%} [{n['diversity_gain_ci'][0]:+.1%}, {n['diversity_gain_ci'][1]:+.1%}]"
            f"{mark} (eval prompts {e['diversity_gain']:+.1%}), adherence {n['adherence_change']:+.1%}"
        )

    numbers = (
        f"{len(kept)} of the {len(real)} models with a real gain on the eval prompts keep one on the open questions "
        f"after Holm over {len(real)}: " + "; ".join(pair(name) for name in open_claims)
    )
    if not_judged:
        numbers += (
            f". Not judged on the open questions (their checkpoints are not kept: judging them retrains them): "
            f"{', '.join(not_judged)}"
        )
    return {"goal": GOALS["e"], "verdict": verdict, "numbers": numbers}


GOALS_BEGIN = (
    "<!-- goals: made by `python -m experiments.compare_finetunes --diversity_models`; edits here are lost -->"
)
GOALS_END = "<!-- /goals -->"


def update_goals(page: Path, goals: list[dict]) -> bool:
    """Write the goals table into `page` between its GOALS_BEGIN and GOALS_END lines (False: the page has none)."""
    from trl_diversity.atomic import write_text_atomic

    text = page.read_text() if page.is_file() else ""
    if GOALS_BEGIN not in text or GOALS_END not in text:
        return False
    before, rest = text.split(GOALS_BEGIN, 1)
    after = rest.split(GOALS_END, 1)[1]
    table = "\n".join(goals_lines(goals)[4:])  # the table alone, under the page's own heading
    write_text_atomic(page, f"{before}{GOALS_BEGIN}\n{table}\n{GOALS_END}{after}")
    return True


def goals_lines(goals: list[dict]) -> list[str]:
    return [
        "## Goals",
        "",
        "The goals of the comparison (#23), each judged by the rules of `experiments/rules.py` on the tables below.",
        "",
        "| goal | verdict | the numbers |",
        "|---|---|---|",
        *(f"| {g['goal']} | **{g['verdict']}** | {g['numbers']} |" for g in goals),
    ]


LEVER_SEARCH = ROOT / "experiments" / "results" / "lever_search"


def lever_search_compute(results: Path = LEVER_SEARCH) -> list[str]:
    """The lever search's finetunes (training prompts only, `experiments.lever_search`), with their training time."""
    rows = []
    for path in sorted((results / "training").glob("*.json")):
        log = json.loads(path.read_text())
        step = seconds_per_step(log)
        minutes = None if step is None else step * log["finetune"]["max_steps"] / 60
        rows.append((log["finetune"]["name"], log["finetune"]["max_steps"], minutes))
    if not rows:
        return []
    total = sum(minutes or 0.0 for _, _, minutes in rows)
    return [
        "The lever search (`python -m experiments.lever_search`, judged on the training prompts only): each run's "
        "training time, from its log.",
        "",
        "| lever search run | steps | train min |",
        "|---|---|---|",
        *(f"| {name} | {steps} | {'' if m is None else f'{m:.1f}'} |" for name, steps, m in rows),
        "",
        f"{len(rows)} lever-search runs, {total:.1f} min of training in all.",
    ]


def evaluation_compute(budget_name: str, results: Path) -> list[str]:
    """Every evaluated point in the cache, by kind and prompt set, with the generation time its recorded speed
    implies (the evaluation's own wall time was not recorded)."""
    budget = BUDGETS[budget_name]
    points = [Point("cfg", g, guidance_scale=g) for g in budget.guidance_scales]
    points += [Point("temperature", t, temperature=t) for t in budget.temperatures]
    points += [Point("lerp", w) for w in budget.weights]
    variants = [Variant(), Variant(seed=1), *(run.variant for run in RUNS)]
    kinds = {}
    for prompt_set in ("eval", "open"):
        for variant in variants:
            for point in points:
                if point.family != "lerp":
                    kind = "the base model: CFG and temperature"
                elif point.value == 0.0:
                    kind = "the beta = 0 models (w = 0)"
                elif point.value == 1.0:
                    kind = "the diversity models (w = 1)"
                else:
                    kind = "the merge dials' interior points"
                path = point_path(budget_name, variant, point, results, prompt_set)
                kinds.setdefault(path, (kind, prompt_set))
    files = sorted((results / "points").glob("*.json"))
    rows: dict[tuple[str, str], list[float]] = {}
    unattributed = 0
    for path in files:
        if path not in kinds:
            unattributed += 1
            continue
        entry = json.loads(path.read_text())
        tokens = entry["num_prompts"] * entry["samples_per_prompt"] * budget.max_new_tokens
        speed = entry.get("tokens_per_second")
        rows.setdefault(kinds[path], []).append(tokens / speed / 60 if speed else float("nan"))
    if not files:
        return []
    total = sum(sum(minutes) for minutes in rows.values())
    lines = [
        "Evaluations: every point in the cache. Their wall time was not recorded; each point records its generation "
        f"speed (tokens / s, all forward passes included), so its generation took at most {budget.num_prompts} "
        f"prompts x {budget.num_samples} samples x {budget.max_new_tokens} tokens over that speed (less where "
        "completions ended early). Unknown: the judges' time (MiniLM, the base model's NLL and hidden states), the "
        "re-evaluations of cached points when a judge was added, and points evaluated and later replaced.",
        "",
        "| points | prompt set | evaluated | generation, at most (min) |",
        "|---|---|---|---|",
        *(
            f"| {kind} | {prompt_set} | {len(minutes)} | {sum(minutes):.1f} |"
            for (kind, prompt_set), minutes in sorted(rows.items(), key=lambda item: (item[0][1], item[0][0]))
        ),
        "",
        f"{sum(len(m) for m in rows.values())} evaluated points, at most {total:.0f} min of generation in all"
        + (f"; {unattributed} more point files belong to no run listed here." if unattributed else "."),
    ]
    return lines


def algorithms_report(budget_name: str, results: Path, plot: Path) -> tuple[str, dict]:
    grpo, rloo = Variant(), Variant(algorithm="rloo")
    metrics = (QUALITY, MINILM, *HELD_OUT, "fluency_nll")
    header = "| RLOO - GRPO | " + " | ".join(NAMES[m] for m in metrics) + " |"
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    absolute = ["| model | " + " | ".join(NAMES[m] for m in metrics) + " | train s / step |", ""]
    absolute[1] = "|" + "---|" * (absolute[0].count("|") - 1)
    summary, missing = {}, []
    for which, label in (("quality", "quality model (beta = 0)"), ("diversity", "diversity model (beta = 15)")):
        a, b = model_point(budget_name, rloo, which, results), model_point(budget_name, grpo, which, results)
        for algorithm, variant, entry in (("GRPO", grpo, b), ("RLOO", rloo, a)):
            if entry is None:
                continue
            step = seconds_per_step(training_log(budget_name, variant, which, results))
            values = [f"{entry['metrics'][m]['mean']:.3f}" for m in metrics]
            absolute.append(
                f"| {algorithm} {label} | " + " | ".join(values) + f" | {'' if step is None else f'{step:.1f}'} |"
            )
        if a is None or b is None:
            missing.append(f"RLOO {label}")
            continue
        differences = {m: paired_difference(a["per_prompt"][m], b["per_prompt"][m]) for m in metrics}
        lines.append(f"| {label} | " + " | ".join(signed(differences[m]) for m in metrics) + " |")
        summary[which] = {m: differences[m] for m in metrics}
    text = [
        "RLOO's finetunes against GRPO's at the same budget and method settings (80 steps, LoRA, learning rate "
        "2e-4, k = 4, guidance 3, reverse KL, seed 0), each algorithm with its own defaults otherwise: GRPO "
        "`beta = 0`, `loss_type = dapo`; RLOO `beta = 0.05` (KL in the reward). Paired by prompt, 95% bootstrap CIs. "
        "`train s / step` is each run's own wall time per step, measured in different sessions under different loads "
        "(the two GRPO runs, 13.0 and 18.8, differ as much as the algorithms do): it is not a speed comparison; the "
        "side-by-side measurement below is.",
        "",
        *absolute,
        "",
        *lines,
    ]
    if missing:
        text += ["", f"Not in the cache (not run, or not finished): {', '.join(missing)}."]
    side_by_side = ROOT / "benchmarks" / "results" / "step_time_rloo.json"
    timing = json.loads(side_by_side.read_text()) if side_by_side.is_file() else {}
    if timing.get("config", {}).get("compare") == "rloo":
        link = Path(os.path.relpath(side_by_side.with_suffix(".md"), plot.parent)).as_posix()
        grpo_step, rloo_step = timing["grpo"]["median_step_s"], timing["rloo"]["median_step_s"]
        rounds = ", ".join(f"{r:.2f}" for r in timing["ratio_per_round"])
        extra_prepare = (
            timing["rloo"]["median_parts_s"]["prepare_rest"] - timing["grpo"]["median_parts_s"]["prepare_rest"]
        )
        text += [
            "",
            f"Step time measured side by side in one process (`python benchmarks/step_time.py --compare rloo`, "
            f"{timing['config']['rounds']} alternating rounds of {timing['config']['steps_per_round']} steps, the "
            f"method on in both): median step GRPO {grpo_step:.2f} s, RLOO {rloo_step:.2f} s, **RLOO / GRPO "
            f"{timing['ratio_median']:.2f}x** (per round: {rounds}). Parts: "
            f"[benchmarks/results/step_time_rloo.md]({link}). Of RLOO's extra {rloo_step - grpo_step:.1f} s, "
            f"{extra_prepare:.1f} s are in `prepare_rest`: two no-grad forwards GRPO skips here, the policy's own "
            "log-probabilities (RLOO always computes them) and the reference model's (for its KL penalty).",
        ]
        summary["step_time_side_by_side"] = {
            "grpo_median_step_s": grpo_step,
            "rloo_median_step_s": rloo_step,
            "ratio_median": timing["ratio_median"],
            "ratio_per_round": timing["ratio_per_round"],
        }
    return "\n".join(text), summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", choices=list(BUDGETS), default="full")
    parser.add_argument("--results", default=None)
    parser.add_argument("--diversity_models", action="store_true")
    parser.add_argument("--algorithms", action="store_true")
    parser.add_argument(
        "--out", default=None, help="Markdown file (default: docs/results/<report>.md); plots beside it"
    )
    parser.add_argument("--summary", default=None, help="JSON of the numbers (default: <results>/<report>.json)")
    parser.add_argument(
        "--eval_prompts",
        choices=["eval", "open"],
        default="eval",
        help="the prompt set the points were judged on; 'open' (reproduce.py --finetunes_only --eval_prompts open) "
        "writes <report>_open.md",
    )
    args = parser.parse_args(argv)
    EVAL_PROMPTS["set"] = args.eval_prompts
    if args.diversity_models == args.algorithms:
        parser.error("choose one of --diversity_models and --algorithms")
    results = Path(args.results or ROOT / "experiments" / "results" / f"reproduction-{args.budget}")
    name, build = (
        ("diversity_models", diversity_models_report) if args.diversity_models else ("rloo_vs_grpo", algorithms_report)
    )
    if args.eval_prompts != "eval":
        name += f"_{args.eval_prompts}"
    out = Path(args.out or ROOT / "docs" / "results" / f"{name}.md")
    text, summary = build(args.budget, results, out.with_name(f"{out.stem}_training.png"))
    from trl_diversity.atomic import write_text_atomic

    command = (
        f"python -m experiments.compare_finetunes --{'diversity_models' if args.diversity_models else 'algorithms'}"
        + (f" --eval_prompts {args.eval_prompts}" if args.eval_prompts != "eval" else "")
    )
    write_text_atomic(out, f"{text}\n\nMade by `{command}` from the reproduction's cache ({results.name}).\n")
    write_text_atomic(Path(args.summary or results / f"{name}.json"), json.dumps(summary, indent=1) + "\n")
    if "goals" in summary and args.out is None:  # the results page shows the same table
        page = ROOT / "docs" / "results" / "README.md"
        if not update_goals(page, summary["goals"]):
            print(f"{page} has no goals block ({GOALS_BEGIN} ... {GOALS_END}): not updated", file=sys.stderr)
    print(text)


if __name__ == "__main__":
    main()
