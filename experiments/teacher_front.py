"""Teachers beyond plain CFG, placed on the quality-diversity plane at inference, on the *training* prompts only.

    python -m experiments.teacher_front              # sample every teacher (resumable: one cached file each), report
    python -m experiments.teacher_front --report_only

Each teacher is the frozen default model (SmolLM2-135M-Instruct) sampled with a guidance specification
(`trl_diversity/guidance/`), with `k` and the length of the default job (4 samples of 48 tokens), on the first
training prompts. Nothing is distilled: a teacher that does not lie above CFG's front here cannot give a distilled
model above it. The report compares every teacher with CFG's front (gamma 1 to 5), paired over prompts:

- each teacher point against the front at its own adherence (`gap_to_front`);
- each teacher family (one kind of guidance over its grid) against the front on their shared adherence range, when
  that range is at least `MIN_SHARED_RANGE` wide (the one rule of `experiments/rules.py`);

with bias-corrected (BCa) intervals and p-values (`experiments/front_gaps.py`), and Holm-corrects over every
comparison made (all points, all families). The eval prompts are never touched, so
they stay held out for judging the distilled teachers.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from experiments.front_gaps import gap_to_front, matched_quality_gap
from experiments.rules import ALPHA, MIN_SHARED_RANGE, wide_enough
from experiments.runs import ROOT
from trl_diversity.atomic import write_text_atomic
from trl_diversity.toolkit.comparison import holm_rejections

RESULTS = ROOT / "experiments" / "results" / "teacher_front"
PAGE = ROOT / "docs" / "results" / "teacher_front.md"

# Two stages on disjoint training prompts: a screen of every kind of teacher, then a confirmation of the kinds the
# screen points to, on fresh prompts, so that the confirming test is not run on the prompts that chose it.
STAGES = {"screen": (0, 12), "confirm": (12, 48)}  # (first prompt, number of prompts)
K = 4
MAX_NEW_TOKENS = 48
AXES = ("adherence", "pairwise_diversity")
TYPICAL = "{prompt} Give the most common, predictable answer."


@dataclass(frozen=True)
class Teacher:
    name: str
    family: str
    guidance_scale: float = 1.0
    guidance: str | None = None
    temperature: float = 1.0


TEACHERS = [  # the screen: CFG's front, then one kind of guidance at a time
    *[Teacher(f"cfg-{g:g}", "cfg", guidance_scale=g) for g in (1.0, 1.5, 3.0, 5.0)],
    *[Teacher(f"interval4-{w + 1:g}", "interval from 4", guidance=f"{w:g}*null from 4") for w in (2, 3)],
    Teacher("typical-1", "typical-answer negative", guidance=f'1*"{TYPICAL}"'),
    Teacher("layer16-1", "early-layer negative", guidance="1*layer:16"),
    Teacher("null2+typical1", "null + typical negative", guidance=f'2*null + 1*"{TYPICAL}"'),
    Teacher("null2+layer16", "null + early layer", guidance="2*null + 1*layer:16"),
    Teacher("temperature-0.7", "temperature", temperature=0.7),
    Teacher("cfg-2", "cfg", guidance_scale=2.0),
    # added after the first ten: the early layer at weight 1 wrecks adherence (0.07), so smaller weights, a later layer
    *[
        Teacher(f"layer{n}-{w:g}", "early-layer negative", guidance=f"{w:g}*layer:{n}")
        for n, w in ((16, 0.2), (24, 0.3))
    ],
]
# The confirmation, chosen from the screen alone: interval guidance was the only kind above CFG's front there (by
# +0.016 and +0.019, CIs through zero), so its grid is widened (the start position and the scale) and tested on 48
# fresh training prompts against CFG's front and temperature's.
CONFIRM = [
    *[Teacher(f"cfg-{g:g}", "cfg", guidance_scale=g) for g in (1.0, 1.5, 2.0, 3.0, 5.0)],
    *[Teacher(f"temperature-{t:g}", "temperature", temperature=t) for t in (0.6, 0.8)],
    *[Teacher(f"interval4-{w + 1:g}", "interval from 4", guidance=f"{w:g}*null from 4") for w in (1, 2, 4)],
    *[Teacher(f"interval8-{w + 1:g}", "interval from 8", guidance=f"{w:g}*null from 8") for w in (2, 4)],
]


STAGE_TEACHERS = {"screen": TEACHERS, "confirm": CONFIRM}


def folder(stage: str) -> Path:
    return RESULTS / stage


def generations_path(stage: str, teacher: Teacher) -> Path:
    return folder(stage) / f"{teacher.name}.jsonl"


def metrics_path(stage: str, teacher: Teacher) -> Path:
    return folder(stage) / f"{teacher.name}.metrics.json"


def stage_prompts(stage: str) -> list[str]:
    from trl_diversity.data import load_prompts

    first, count = STAGES[stage]
    return list(load_prompts("train")["prompt"][first : first + count])


def sample_all(stage: str, teachers: list[Teacher]) -> None:
    from trl_diversity.defaults import resolve_model
    from trl_diversity.toolkit.generation import Sampling, load_generation_model, write_generations

    prompts = stage_prompts(stage)
    loaded = {}

    def model():
        if not loaded:
            loaded["pair"] = load_generation_model(resolve_model("default"))
        return loaded["pair"]

    for index, teacher in enumerate(teachers, 1):
        what = teacher.guidance or f"CFG {teacher.guidance_scale:g}, temperature {teacher.temperature:g}"
        print(f"[{stage} {index}/{len(teachers)}] {teacher.name}: {what}", flush=True)
        started = time.perf_counter()
        sampling = Sampling(
            num_samples=K,
            max_new_tokens=MAX_NEW_TOKENS,
            guidance_scale=teacher.guidance_scale,
            guidance=teacher.guidance,
            temperature=teacher.temperature,
            seed=0,
            prompts_per_batch=12,
        )
        write_generations(
            generations_path(stage, teacher),
            prompts,
            model,
            sampling,
            label=teacher.name,
            source={"model": "default"},
            progress=False,
        )
        print(f"    {time.perf_counter() - started:.0f} s", flush=True)


def evaluate_all(stage: str) -> dict[str, dict]:
    from trl_diversity.rewards.embedder import load_embedder
    from trl_diversity.toolkit.evaluation import group_records, per_prompt_metrics
    from trl_diversity.toolkit.generation import read_jsonl

    embedder = None
    evaluated = {}
    for teacher in STAGE_TEACHERS[stage]:
        path = metrics_path(stage, teacher)
        # The samples stay on the machine that drew them; their per-prompt metrics are committed.
        if not path.is_file() and not generations_path(stage, teacher).is_file():
            continue
        if not path.is_file():
            embedder = embedder or load_embedder(None)
            records = read_jsonl(generations_path(stage, teacher))
            [(_, by_prompt)] = group_records(records).items()
            metrics = per_prompt_metrics(by_prompt, embedder)
            entry = {
                "per_prompt": metrics,
                "forward_passes_per_token": records[0]["forward_passes_per_token"],
                "sampling_seconds": sum(r["seconds"] for r in records),
                "tokens": sum(len(r["completion_ids"]) for r in records),
            }
            write_text_atomic(path, json.dumps(entry) + "\n")
        evaluated[teacher.name] = json.loads(path.read_text())
    return evaluated


# ---------------------------------------------------------------------------------------------------------------------
# Comparisons with CFG's front


def analyse(evaluated: dict[str, dict], teachers: list[Teacher]) -> dict:
    """Every teacher point against CFG's front at its own adherence, and every family of two or more points against
    CFG's front on their shared range (when it is at least `MIN_SHARED_RANGE` wide): BCa intervals and p-values
    (`experiments/front_gaps.py`), Holm over all of them."""
    cfg = [evaluated[t.name]["per_prompt"] for t in teachers if t.family == "cfg" and t.name in evaluated]
    guided = [t for t in teachers if t.family != "cfg" and t.name in evaluated]
    points = {t.name: gap_to_front(evaluated[t.name]["per_prompt"], cfg, *AXES) for t in guided}
    families = {}
    for family in dict.fromkeys(t.family for t in guided):
        members = [evaluated[t.name]["per_prompt"] for t in guided if t.family == family]
        if len(members) < 2:
            families[family] = None
            continue
        gap = matched_quality_gap(members, cfg, *AXES)
        families[family] = gap if wide_enough(gap) else {"too_narrow": True, "range": (gap or {}).get("quality_range")}
    tested = {f"point {k}": v["p_value"] for k, v in points.items() if v} | {
        f"family {k}": v["p_value"] for k, v in families.items() if v and "p_value" in v
    }
    survivors = holm_rejections(tested, ALPHA)
    return {"points": points, "families": families, "tested": tested, "survive_holm": sorted(survivors)}


def _fmt(gap: dict | None) -> str:
    if gap is None:
        return "outside CFG's adherence range"
    if gap.get("too_narrow"):
        shared = gap.get("range")
        return (
            "no shared range" if shared is None else f"shared range {shared[1] - shared[0]:.3f} < {MIN_SHARED_RANGE}"
        )
    return f"{gap['mean']:+.3f} [{gap['low']:+.3f}, {gap['high']:+.3f}], p = {gap['p_value']:.3f}"


def _is_above(key: str, analysis: dict) -> bool:
    kind, name = key.split(" ", 1)
    gap = (analysis["points"] if kind == "point" else analysis["families"])[name]
    return gap is not None and gap.get("mean", 0) > 0


def stage_section(stage: str, evaluated: dict[str, dict], analysis: dict) -> list[str]:
    first, count = STAGES[stage]
    teachers = STAGE_TEACHERS[stage]
    lines = [
        f"## The {stage}: training prompts {first} to {first + count - 1} ({count} prompts)",
        "",
        "| teacher | guidance | passes / token | adherence | diversity | gap to CFG's front | survives Holm |",
        "|---|---|---|---|---|---|---|",
    ]
    survivors = set(analysis["survive_holm"])
    for t in teachers:
        if t.name not in evaluated:
            continue
        e = evaluated[t.name]
        adherence = float(np.mean(e["per_prompt"]["adherence"]))
        diversity = float(np.mean(e["per_prompt"]["pairwise_diversity"]))
        what = t.guidance or (f"CFG {t.guidance_scale:g}" if t.family == "cfg" else f"temperature {t.temperature:g}")
        gap = "(the front)" if t.family == "cfg" else _fmt(analysis["points"].get(t.name))
        holm = "" if t.family == "cfg" else ("yes" if f"point {t.name}" in survivors else "no")
        passes = e["forward_passes_per_token"]
        lines.append(f"| {t.name} | `{what}` | {passes} | {adherence:.3f} | {diversity:.3f} | {gap} | {holm} |")
    lines += ["", "| family | its front against CFG's | survives Holm |", "|---|---|---|"]
    for family, gap in analysis["families"].items():
        holm = "yes" if f"family {family}" in survivors else ("no" if gap and "p_value" in gap else "")
        lines.append(f"| {family} | {_fmt(gap) if gap is not None else 'one point'} | {holm} |")
    above = [k for k in analysis["survive_holm"] if _is_above(k, analysis)]
    lines += [
        "",
        f"Comparisons made in the {stage}: {len(analysis['tested'])}; above CFG's front after Holm: "
        + (", ".join(above) if above else "**none**")
        + ".",
        "",
        f"![the {stage}'s teachers on one front](teacher_front_{stage}.png)",
        "",
    ]
    return lines


def report(results: dict[str, tuple[dict, dict]]) -> str:
    lines = [
        "# Teachers beyond plain CFG, at inference, on the training prompts",
        "",
        "Generated by `python -m experiments.teacher_front` (no hand-written number). Each teacher is the frozen "
        "default model (SmolLM2-135M-Instruct) sampled on *training* prompts, "
        f"{K} samples of up to {MAX_NEW_TOKENS} tokens each (the default job's `k` and length), seed 0, temperature 1 "
        "unless named. Adherence and diversity are the MiniLM measures of `trl-diversity evaluate` (the training "
        "reward's embedder: this page chooses teachers, it judges nothing). The eval prompts are not used.",
        "",
        "Two stages on disjoint training prompts: a screen of every kind of teacher, and a confirmation, on fresh "
        "prompts, of the kinds the screen points to (chosen from the screen alone). Gap to CFG's front: the "
        "teacher's diversity minus that of CFG's front (gamma 1 to 5, Pareto, interpolated) at the teacher's own "
        "adherence, paired over prompts (2000 bootstrap resamples of prompts, BCa interval and the p-value that "
        f"inverts it). A family's gap is its own front against CFG's over their shared adherence range, only where "
        f"that range is at least {MIN_SHARED_RANGE} wide. Holm's correction runs over every comparison of a stage.",
        "",
    ]
    for stage, (evaluated, analysis) in results.items():
        lines += stage_section(stage, evaluated, analysis)
    return "\n".join(lines)


def plot(stage: str, evaluated: dict[str, dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    teachers = [t for t in STAGE_TEACHERS[stage] if t.name in evaluated]
    at = {t.name: [float(np.mean(evaluated[t.name]["per_prompt"][axis])) for axis in AXES] for t in teachers}
    # Teachers far off CFG's adherence range (an early layer at full weight) are named, not drawn: they would
    # squeeze the front into a corner.
    cfg_adherence = [at[t.name][0] for t in teachers if t.family == "cfg"]
    low, high = min(cfg_adherence) - 0.05, max(cfg_adherence) + 0.05
    off = [t.name for t in teachers if not low <= at[t.name][0] <= high]
    fig, ax = plt.subplots(figsize=(8, 5.5))
    markers = dict(zip(dict.fromkeys(t.family for t in teachers), "os^v<>Dph*"))
    for family in markers:
        members = [t for t in teachers if t.family == family and t.name not in off]
        # a dial is drawn in the order of its knob (CFG's scale, the temperature, the guided weight)
        members.sort(key=lambda t: (t.guidance_scale, -t.temperature, t.guidance or ""))
        if not members:
            continue
        xs, ys = [at[t.name][0] for t in members], [at[t.name][1] for t in members]
        style = "-" if family in ("cfg", "temperature") else ":"
        ax.plot(xs, ys, style, marker=markers[family], label=family, linewidth=1.5 if family == "cfg" else 1)
        for t, x, y in zip(members, xs, ys):
            ax.annotate(t.name.split("-", 1)[-1], (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("prompt adherence (MiniLM cosine)")
    ax.set_ylabel("pairwise diversity (MiniLM)")
    first, count = STAGES[stage]
    title = f"Teachers at inference ({stage}): {count} training prompts x {K} samples"
    ax.set_title(title + (f"\nnot drawn, adherence far off: {', '.join(off)}" if off else ""), fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(PAGE.parent / f"teacher_front_{stage}.png", dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--report_only", action="store_true", help="report what is cached, sample nothing")
    parser.add_argument("--stage", choices=list(STAGES), nargs="*", default=list(STAGES), help="stages to sample")
    args = parser.parse_args(argv)
    if not args.report_only:
        for stage in args.stage:
            folder(stage).mkdir(parents=True, exist_ok=True)
            sample_all(stage, STAGE_TEACHERS[stage])
    results = {}
    for stage in STAGES:
        evaluated = evaluate_all(stage)
        if not evaluated:
            continue
        analysis = analyse(evaluated, STAGE_TEACHERS[stage])
        write_text_atomic(folder(stage) / "summary.json", json.dumps(analysis, indent=2) + "\n")
        plot(stage, evaluated)
        results[stage] = (evaluated, analysis)
    write_text_atomic(PAGE, report(results))
    print(PAGE.read_text())


if __name__ == "__main__":
    main()
