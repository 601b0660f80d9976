"""A small, documented search over the method's levers, judged on the *training* prompts only.

    python -m experiments.lever_search            # every run, resumable (each finetune checkpoints and is cached)
    python -m experiments.lever_search --only beta50-reverse_kl

Each run is one short LoRA finetune from the same base and seed. It is judged by what its training log measured on
the training prompts, on-policy: the MiniLM diversity of its own samples (`diversity/pairwise`) and its divergence
from the CFG teacher (`distill/divergence`), averaged over the last steps. No eval prompt is used to choose
anything, so the eval-set numbers of `reproduce.py` stay held out.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from experiments.reproduce import train_finetune
from experiments.runs import BUDGETS, ROOT, Finetune
from trl_diversity.atomic import write_text_atomic  # noqa: E402

STEPS = 24
LAST = 8  # steps averaged at the start and the end of each run

# name -> the levers that differ from the paper's diversity model (diversity_coef 15, reverse KL, CFG 3, k = 4)
RUNS = {  # in the order they run: the same-budget baselines, then one lever at a time
    "beta0-reverse_kl": {"diversity_coef": 0.0},
    "beta15-reverse_kl": {},
    "beta50-reverse_kl": {"diversity_coef": 50.0},
    "beta15-forward_kl": {"distill_divergence": "forward_kl"},
    "beta0-forward_kl": {"diversity_coef": 0.0, "distill_divergence": "forward_kl"},
    "beta15-jsd": {"distill_divergence": "jsd"},
    "beta15-k8": {"num_generations": 8},
    "beta15-cfg1.5": {"guidance_scale": 1.5},
    # quality x diversity (DARLING-style; the CFG teacher's likelihood is the quality), at both coefficients
    "beta15-quality": {"diversity_quality": "teacher_likelihood"},
    "beta50-quality": {"diversity_coef": 50.0, "diversity_quality": "teacher_likelihood"},
}


def finetune_of(name: str) -> Finetune:
    levers = {"diversity_coef": 15.0, **RUNS[name]}
    return Finetune(name, max_steps=STEPS, **levers)


def summarize_log(log: dict) -> dict:
    # A built-in measure's mean reward is its pairwise diversity; logs of runs with diversity_quality made before
    # the trainer logged `diversity/pairwise` for them hold only the former.
    rows = [
        {"diversity/pairwise": r.get("diversity/pairwise", r.get("diversity/reward/mean")), **r}
        for r in log["log_history"]
        if "diversity/pairwise" in r or "diversity/reward/mean" in r
    ]

    def mean(key, part):
        values = [r[key] for r in part if key in r]
        return sum(values) / len(values) if values else float("nan")

    return {
        "diversity_first": mean("diversity/pairwise", rows[:LAST]),
        "diversity_last": mean("diversity/pairwise", rows[-LAST:]),
        "divergence_first": mean("distill/divergence", rows[:LAST]),
        "divergence_last": mean("distill/divergence", rows[-LAST:]),
        "advantage_abs": mean("diversity/advantage_abs", rows),
        "train_minutes": next((r["train_runtime"] / 60 for r in log["log_history"] if "train_runtime" in r), None),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", default=None, choices=list(RUNS), help="run only these")
    parser.add_argument("--results", default=str(ROOT / "experiments" / "results" / "lever_search"))
    parser.add_argument("--checkpoints", default=str(ROOT / "outputs" / "lever_search"))
    args = parser.parse_args(argv)
    results, checkpoints = Path(args.results), Path(args.checkpoints)
    names = args.only or list(RUNS)
    for index, name in enumerate(names):
        print(f"[{index + 1}/{len(names)}] {name} ({STEPS} steps)", flush=True)
        train_finetune(finetune_of(name), BUDGETS["full"], checkpoints, results)
        write_table(results)  # after every run, so an interrupted search still reports what it finished


# Each short run's full-budget counterpart in compare_finetunes.py's summary (80 steps, judged on the eval prompts).
FULL_BUDGET_NAMES = {
    "beta15-reverse_kl": "beta = 15",
    "beta50-reverse_kl": "beta = 50",
    "beta15-forward_kl": "beta = 15, forward KL",
    "beta15-jsd": "beta = 15, JSD",
    "beta15-quality": "beta = 15, quality x diversity",
    "beta50-quality": "beta = 50, quality x diversity",
}
FULL_BUDGET_SUMMARY = ROOT / "experiments" / "results" / "reproduction-full" / "diversity_models.json"
# Levers whose settings were run at both budgets, each against the same reference: the short budget is a usable
# filter only if it orders a lever's settings as the full budget does.
LEVER_GROUPS = {
    "the coefficient (reverse KL)": ("beta0-reverse_kl", "beta15-reverse_kl", "beta50-reverse_kl"),
    "the divergence (beta 15)": ("beta0-reverse_kl", "beta15-reverse_kl", "beta15-forward_kl", "beta15-jsd"),
    "quality x diversity": ("beta15-reverse_kl", "beta15-quality", "beta50-reverse_kl", "beta50-quality"),
}


def ranking_against_full_budget(rows: dict) -> list[str]:
    """Does the 24-step search order each lever's settings as the 80-step runs do? On-policy diversity at the end of
    the short run against the full runs' MiniLM diversity gain over beta = 0 on the eval prompts."""
    if not FULL_BUDGET_SUMMARY.is_file():
        return []
    full = json.loads(FULL_BUDGET_SUMMARY.read_text())

    def full_gain(name: str) -> float | None:
        if name.startswith("beta0-reverse_kl"):
            return 0.0  # the reference itself
        entry = full.get(FULL_BUDGET_NAMES.get(name, ""))
        return None if entry is None else entry["diversity_gain"]

    def order(values: dict[str, float]) -> str:
        return " < ".join(sorted(values, key=values.get))

    lines = [
        "",
        "Does this short budget rank a lever's settings as the full budget (80 steps, eval prompts) does? Diversity "
        "order, lowest first: the short runs by their last on-policy diversity, the full runs by their MiniLM "
        "diversity gain over beta = 0 (docs/results/diversity_models.md).",
        "",
        "| lever | short budget (24 steps, training prompts) | full budget (80 steps, eval prompts) | same order |",
        "|---|---|---|---|",
    ]
    for lever, names in LEVER_GROUPS.items():
        short = {n: rows[n]["diversity_last"] for n in names if n in rows}
        long = {n: full_gain(n) for n in names}
        long = {n: v for n, v in long.items() if v is not None}
        if len(short) < len(names) or len(long) < len(names):
            missing = sorted(set(names) - (set(short) & set(long)))
            lines.append(f"| {lever} | | | not yet: {', '.join(missing)} missing |")
            continue
        same = order(short) == order(long)
        lines.append(f"| {lever} | {order(short)} | {order(long)} | {'yes' if same else '**no**'} |")
    return lines


def write_table(results: Path) -> None:
    rows = {}
    for name in RUNS:
        finetune = finetune_of(name)
        log_file = results / "training" / f"{name}-{finetune.key()}.json"
        if log_file.is_file():
            rows[name] = {"levers": RUNS[name], **summarize_log(json.loads(log_file.read_text()))}
    lines = [
        f"Lever search: {STEPS}-step LoRA finetunes from SmolLM2-135M-Instruct, seed 0, training prompts only. "
        f"Values are means over the first and last {LAST} logged steps of each run's own samples.",
        "",
        "| run | levers | diversity (MiniLM) first -> last | divergence to CFG teacher first -> last "
        "| mean abs diversity advantage | train time |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        minutes = row["train_minutes"]
        lines.append(
            f"| {name} | {row['levers'] or 'the paper: beta 15, reverse KL, CFG 3, k 4'} | "
            f"{row['diversity_first']:.3f} -> {row['diversity_last']:.3f} | "
            f"{row['divergence_first']:.3f} -> {row['divergence_last']:.3f} | {row['advantage_abs']:.2f} | "
            f"{'' if minutes is None else f'{minutes:.0f} min'} |"
        )
    lines += ranking_against_full_budget(rows)
    write_text_atomic(results / "lever_search.md", "\n".join(lines) + "\n")
    write_text_atomic(results / "lever_search.json", json.dumps(rows, indent=1))
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main()
