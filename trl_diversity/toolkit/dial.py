"""The quality-diversity dial, by target: the merge weight `w` whose model `(1 - w) * A + w * B` reaches a target
value of a metric (e.g. `adherence=0.55`) on the evaluation prompts.

Along the weight, the merged models move from the quality-focused finetune A (high adherence, low diversity) to the
diversity-focused finetune B, so a target between the two ends is found by bisection on `w`: evaluate both ends, then
the midpoint of the bracket that holds the target, until a point is within `tolerance` of it. Each point is
generated and evaluated once and cached exactly like a sweep's (`sweep.PointEvaluator`): the midpoints 0.5, 0.25,
0.75 are the sweep's default weights, so a dial run on a sweep's folder starts from the sweep's points, and a second
target on the same folder reuses the first run's.

Measured on a finite set of prompts, the metric is a noisy function of `w` and need not be monotone; bisection still
ends at a crossing of the measured values between two bracketing weights. The point's 95% CI is reported beside it:
a tolerance much tighter than the CI chases noise.

This module imports nothing heavy until `dial` runs, so the command line checks a target before torch loads.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from trl_diversity.errors import UserError, did_you_mean

# Metrics a target may name (the keys of `evaluation.METRICS` that a sweep point carries), and short aliases.
TARGET_METRICS = ("adherence", "pairwise_diversity", "vendi", "distinct_1", "distinct_2", "self_bleu", "fluency_nll")
TARGET_ALIASES = {"quality": "adherence", "diversity": "pairwise_diversity"}


@dataclass(frozen=True)
class Target:
    metric: str
    value: float

    @classmethod
    def parse(cls, spec: str) -> Target:
        """`adherence=0.55`, `diversity=0.5` (pairwise diversity), or any of `TARGET_METRICS`."""
        name, sep, number = spec.partition("=")
        name = name.strip()
        names = (*TARGET_METRICS, *TARGET_ALIASES)
        if not sep:
            raise UserError(f"{spec!r} needs the form metric=value, e.g. adherence=0.55 or diversity=0.5")
        if name not in names:
            raise UserError(
                f"unknown metric {name!r}{did_you_mean(name, names) or ';'} the metrics: {', '.join(names)}"
            )
        try:
            value = float(number)
        except ValueError:
            raise UserError(f"{spec!r}: {number.strip()!r} is not a number") from None
        return cls(TARGET_ALIASES.get(name, name), value)

    def __str__(self) -> str:
        return f"{self.metric}={self.value:g}"


class TargetOutOfReach(UserError):
    """The target lies outside the values that the two finetunes (weights 0 and 1) span."""


def bisect_weight(
    measure: Callable[[float], dict], target: Target, tolerance: float = 0.01, max_evaluations: int = 8
) -> tuple[float, list[dict]]:
    """The weight in [0, 1] whose point comes closest to `target`, and every evaluation made, in order.

    `measure(w)` returns a point (as `PointEvaluator` does); its `metrics[target.metric]` holds mean, low and high.
    Raises `TargetOutOfReach`, naming the closer end, when the target is not between the two ends' values.
    """
    if max_evaluations < 2:
        raise UserError("The dial needs at least 2 evaluations (the two ends).")
    evaluations: list[dict] = []

    def value_at(weight: float) -> float:
        point = measure(weight)
        metric = point["metrics"].get(target.metric)
        if metric is None:
            raise UserError(f"The points carry no {target.metric!r} (it needs the fluency model: drop --no_fluency).")
        evaluations.append({"weight": weight, **{k: metric[k] for k in ("mean", "low", "high")}})
        return metric["mean"]

    def closest() -> float:
        return min(evaluations, key=lambda e: abs(e["mean"] - target.value))["weight"]

    low_weight, high_weight = 0.0, 1.0
    at_low, at_high = value_at(low_weight), value_at(high_weight)
    if min(at_low, at_high) - tolerance <= target.value <= max(at_low, at_high) + tolerance:
        if min(abs(at_low - target.value), abs(at_high - target.value)) <= tolerance:
            return closest(), evaluations
    else:
        raise TargetOutOfReach(_out_of_reach_message(target, evaluations))
    # Invariant: the target lies between the values at low_weight and high_weight.
    low_side = at_low < target.value
    while len(evaluations) < max_evaluations:
        middle = (low_weight + high_weight) / 2
        at_middle = value_at(middle)
        if abs(at_middle - target.value) <= tolerance:
            break
        if (at_middle < target.value) == low_side:
            low_weight = middle
        else:
            high_weight = middle
    return closest(), evaluations


def _out_of_reach_message(target: Target, evaluations: list[dict]) -> str:
    ends = {e["weight"]: e for e in evaluations}
    a, b = ends[0.0], ends[1.0]
    near = min((a, b), key=lambda e: abs(e["mean"] - target.value))
    which = "the quality model, --quality_model" if near is a else "the diversity model, --diversity_model"
    low, high = sorted((a["mean"], b["mean"]))
    return (
        f"The target {target} lies outside what the two models span: {target.metric} is {_ci(a)} at weight 0 "
        f"(--quality_model) and {_ci(b)} at weight 1 (--diversity_model). The closest end is weight "
        f"{near['weight']:g} ({which}) at {near['mean']:.3f}: use that model as it is, aim between {low:.3f} and "
        f"{high:.3f}, or train a finetune further out."
    )


def _ci(entry: dict) -> str:
    return f"{entry['mean']:.3f} [{entry['low']:.3f}, {entry['high']:.3f}]"


def dial(
    settings,
    target: Target,
    output_dir: str | os.PathLike,
    *,
    tolerance: float = 0.01,
    max_evaluations: int = 8,
    merged: bool = False,
    overwrite: bool = False,
    report: Callable[[str], None] | None = None,
) -> dict:
    """Find the weight for `target` by bisection and write its merged model to `output_dir` (a LoRA adapter for two
    adapters unless `merged`, else a full checkpoint), with `dial.json` inside: the weight, the measured point with
    its 95% CI, and every evaluation.

    `settings` is a `sweep.SweepSettings` (its `weights` and `guidance_scales` are ignored): the generation and
    evaluation options, and in `output_dir` the folder whose `points/` cache is read and extended. Give the same
    settings as a sweep to reuse its points. `report` receives one line per evaluated point (a point can take
    minutes on a CPU).
    """
    from trl_diversity.atomic import write_text_atomic
    from trl_diversity.toolkit.merging import check_lerp_pair, concatenation_refusal, lerp_merge
    from trl_diversity.toolkit.sweep import PointEvaluator

    output = Path(output_dir)
    if output.exists() and not overwrite:
        raise UserError(f"{output} already exists; pass overwrite=True (--overwrite) to replace it.")
    # Refuse a pair that cannot be merged before any point is evaluated (minutes each), not after the bisection.
    check_lerp_pair(settings.model_a, settings.model_b, base=settings.base, merged=True)
    refusal = concatenation_refusal(settings.model_a, settings.model_b)
    if refusal is not None:
        raise UserError(
            f"The dial evaluates each weight as one LoRA adapter, and this pair's interpolation is not one: {refusal}. "
            "Merge each adapter into its base (`trl-diversity merge ADAPTER ADAPTER --weight 0 --merged --output "
            "FOLDER`) and dial the two full checkpoints."
        )
    evaluate = PointEvaluator(settings, keep_models=False)
    cached: set[float] = set()
    points: dict[float, dict] = {}

    def measure(weight: float) -> dict:
        if evaluate.is_cached("merge", weight):
            cached.add(weight)
        points[weight] = evaluate("merge", weight)
        metric = points[weight]["metrics"].get(target.metric)
        if report is not None and metric is not None:
            source = " (cached)" if weight in cached else ""
            report(f"w={weight:g}: {target.metric} {_ci(metric)}{source}; target {target.value:g}")
        return points[weight]

    weight, evaluations = bisect_weight(measure, target, tolerance, max_evaluations)
    for entry in evaluations:
        entry["cached"] = entry["weight"] in cached
    point = points[weight]
    measured = point["metrics"][target.metric]
    lerp_merge(
        settings.model_a, settings.model_b, weight, output, base=settings.base, merged=merged, overwrite=overwrite
    )
    result = {
        "target": {"metric": target.metric, "value": target.value, "tolerance": tolerance},
        "weight": weight,
        "measured": {k: measured[k] for k in ("mean", "low", "high")},
        "reached": abs(measured["mean"] - target.value) <= tolerance,
        "target_in_ci": measured["low"] <= target.value <= measured["high"],
        "quality_model": settings.model_a,
        "diversity_model": settings.model_b,
        "base": settings.base,
        "metrics": point["metrics"],
        "forward_passes_per_token": point["forward_passes_per_token"],
        "num_prompts": point["num_prompts"],
        "samples_per_prompt": point["samples_per_prompt"],
        "evaluations": evaluations,
        "settings": {k: v for k, v in asdict(settings).items() if k not in ("prompts", "weights", "guidance_scales")},
    }
    write_text_atomic(output / "dial.json", json.dumps(result, indent=2) + "\n")
    return result


def dial_summary(result: dict, output_dir: str | os.PathLike) -> str:
    """What the command prints: the weight, the measured point against the target, and what was written."""
    target, measured = result["target"], result["measured"]
    new = sum(not e["cached"] for e in result["evaluations"])
    verdict = (
        f"within {target['tolerance']:g} of the target"
        if result["reached"]
        else f"the closest of {len(result['evaluations'])} evaluations; not within {target['tolerance']:g} "
        "(raise --max_evaluations or --tolerance)"
    )
    return (
        f"weight {result['weight']:g}: {target['metric']} {_ci(measured)} for the target {target['value']:g}, "
        f"{verdict}. {len(result['evaluations'])} points evaluated ({new} new, the rest from the cache).\n"
        f"Wrote the merged model to {output_dir} and the measured point to {Path(output_dir) / 'dial.json'}."
    )
