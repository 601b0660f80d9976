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
from dataclasses import dataclass, replace
from pathlib import Path

from experiments.reproduction_report import agreeing_judges, claim_b_verdict  # claim (b)'s one rule
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


def cached_point(budget_name: str, variant: Variant, point: Point, results: Path) -> dict | None:
    """One evaluated point of a run, from the cache, or None."""
    budget = replace(variant.apply(BUDGETS[budget_name]), eval_prompts=EVAL_PROMPTS["set"])
    prompts = budget.prompts()
    path = results / "points" / f"{point_file_stem(point)}-{point_key(point, budget, prompts)}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def model_point(budget_name: str, variant: Variant, which: str, results: Path) -> dict | None:
    """The cached point of one finetune (`which`: "quality" is w = 0, "diversity" is w = 1), or None."""
    return cached_point(budget_name, variant, Point("lerp", 0.0 if which == "quality" else 1.0), results)


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


MIN_SHARED_RANGE = 0.02  # #23's goal (c): a front comparison over at least this much adherence


def dials_section(baselines: dict[str, list[dict]], plot: Path, summary: dict, num_prompts: int) -> list[str]:
    """Every dial on one plot, and each LERP dial against every other family at matched adherence (the CI over a
    range fixed by the point estimate; the share of resamples where a front fell short of it is reported)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from trl_diversity.toolkit.comparison import front, matched_quality_gap

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
        "both span (fixed by the point estimate), paired bootstrap 95% CI; 'outside' is the share of resamples in "
        f"which a front did not reach across that range (read at its end point there). A range narrower than "
        f"{MIN_SHARED_RANGE} does not meet goal (c)'s terms.",
        "",
        "| dial | against | shared adherence range | MiniLM gap [95% CI] | outside |",
        "|---|---|---|---|---|",
    ]
    for dial, points in baselines.items():
        if not dial.startswith("LERP"):
            continue
        for other, family in baselines.items():
            if other.startswith("LERP"):
                continue
            gap = matched_quality_gap(
                [p["per_prompt"] for p in points], [p["per_prompt"] for p in family], QUALITY, MINILM
            )
            summary.setdefault("dials", {})[f"{dial} vs {other}"] = gap
            if gap is None:
                lines.append(f"| {dial} | {other} | none | | |")
                continue
            low, high = gap["quality_range"]
            width = "" if high - low >= MIN_SHARED_RANGE else f" (< {MIN_SHARED_RANGE} wide)"
            lines.append(
                f"| {dial} | {other} | {low:.3f}-{high:.3f}{width} | {signed(gap)} | "
                f"{gap['resamples_outside_range']:.0%} |"
            )
    if lines[-1] == "|---|---|---|---|---|":  # no LERP dial's interior was evaluated on this prompt set
        lines[-3:] = [
            "",
            "No merge dial was evaluated on these prompts (only the finetunes themselves): nothing to compare.",
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
    gain = diversity["mean"] / reference["metrics"][MINILM]["mean"]
    loss = -adherence["mean"] / reference["metrics"][QUALITY]["mean"]
    judges = {name: paired_difference(model["per_prompt"][name], reference["per_prompt"][name]) for name in HELD_OUT}
    agreeing = [NAMES[name] for name in agreeing_judges(judges)]
    verdict = claim_b_verdict(gain, loss, agreeing, diversity["low"])
    verdict = "**holds**" if verdict == "holds" else verdict
    cells = [
        f"{gain:+.1%} ({signed(diversity)})",
        f"{-loss:+.1%} ({signed(adherence)})",
        *(signed(judges[name], 3 if name != "self_bleu" else 2) for name in HELD_OUT),
        ", ".join(agreeing) or "none",
        f"{diversity['win_rate']:.0%}",
    ]
    numbers = {"diversity_gain": gain, "adherence_change": -loss, "agreeing_judges": agreeing, "verdict": verdict}
    return cells, verdict, numbers


def diversity_models_report(budget_name: str, results: Path, plot: Path) -> tuple[str, dict]:
    num_prompts = len(replace(BUDGETS[budget_name], eval_prompts=EVAL_PROMPTS["set"]).prompts())
    header = (
        "| diversity model | MiniLM diversity vs beta = 0 | adherence vs beta = 0 | "
        + " | ".join(NAMES[n] for n in HELD_OUT)
        + " | held-out judges agreeing | MiniLM win rate | claim (b) |"
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
        "bootstrap CIs over prompts. Claim (b): MiniLM diversity at least +20% over beta = 0, adherence at most 5% "
        "lower, and a held-out judge agreeing (its paired difference significant in the better direction after Holm's correction over the four judges).",
        "",
        *lines,
    ]
    if missing:
        text += ["", f"Not in the cache (not run, or not finished): {', '.join(missing)}."]
    # A single model has no front of its own: how much more diverse is it than each front at its own adherence?
    from trl_diversity.toolkit.comparison import gap_to_front

    baselines = fronts(budget_name, results)
    gap_lines = []
    for run in RUNS:
        name = run.name
        model = model_point(budget_name, run.variant, "diversity", results)
        if model is None:
            continue
        cells, gaps = [], {}
        for front_name, family in baselines.items():
            if front_name == run.front:  # the model is that dial's end: the gap is zero by construction
                cells.append("its own dial")
                continue
            gaps[front_name] = gap_to_front(model["per_prompt"], [p["per_prompt"] for p in family], QUALITY, MINILM)
            cells.append("outside its adherence range" if gaps[front_name] is None else signed(gaps[front_name]))
        summary.setdefault(name, {})["minilm_over_front_at_own_adherence"] = gaps
        gap_lines.append(f"| {name} ({model['metrics'][QUALITY]['mean']:.3f}) | " + " | ".join(cells) + " |")
    if gap_lines:
        header = "| model (its adherence) | " + " | ".join(f"vs {name} front" for name in baselines) + " |"
        text += [
            "",
            "MiniLM diversity of each diversity model over each front at the model's own adherence (the front is "
            "linearly interpolated between its Pareto points; paired bootstrap over prompts, 95% CI). Above zero: "
            "the model is more diverse than what that dial offers at the same adherence.",
            "",
            header,
            "|" + "---|" * (header.count("|") - 1),
            *gap_lines,
        ]
    # Does a target beat a fixed beta? The target model against the beta = 0-beta = 50 dial of its own seed (the
    # same beta = 0 model at w = 0), at the target model's adherence.
    same_seed_lines = []
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
        cells = []
        for metric in (MINILM, "base_lm_diversity"):
            gap = gap_to_front(target["per_prompt"], [p["per_prompt"] for p in dial], QUALITY, metric)
            cells.append("outside its adherence range" if gap is None else signed(gap))
            summary.setdefault(f"{run.name} vs beta 0-50 dial, seed {seed}", {})[metric] = gap
        same_seed_lines.append(
            f"| {run.name} | {seed} | {target['metrics'][QUALITY]['mean']:.3f} | " + " | ".join(cells) + " |"
        )
    if same_seed_lines:
        text += [
            "",
            "The target model against the `beta = 0`-`beta = 50` merge dial of the same training seed, at the target "
            "model's adherence (paired bootstrap over prompts, 95% CI; above zero: the target model is more diverse "
            "than the fixed-beta dial offers there):",
            "",
            "| target model | seed | its adherence | MiniLM diversity over the dial | base-LM diversity over the dial |",
            "|---|---|---|---|---|",
            *same_seed_lines,
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
    text += ["", *compute_table(results)]
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
    print(text)


if __name__ == "__main__":
    main()
