"""The quality-diversity sweep: CFG at several guidance scales on the base model, against weight interpolation
between a quality-focused and a diversity-focused finetune (no CFG, one forward pass per token).

Every point is generated and evaluated on the same prompts, then cached under `<output>/points/` by a key of its
settings, so a re-run with one more point only computes that point. Outputs: `sweep.json`, `sweep.md` (every point,
its cost, whether it is Pareto-optimal, each front's hypervolume) and `sweep.png` (the fronts with 95% CIs).
"""

from __future__ import annotations

import gc
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from trl_diversity.atomic import write_text_atomic
from trl_diversity.toolkit.evaluation import summarize
from trl_diversity.toolkit.generation import generate_records, load_generation_model, write_jsonl
from trl_diversity.toolkit.merging import lerp_merge
from trl_diversity.toolkit.pareto import hypervolume, pareto_mask

QUALITY, DIVERSITY = "adherence", "pairwise_diversity"


@dataclass
class SweepSettings:
    base: str
    model_a: str  # the quality-focused finetune (merge weight 0)
    model_b: str  # the diversity-focused finetune (merge weight 1)
    output_dir: str
    prompts: list[str]
    guidance_scales: list[float] = field(default_factory=lambda: [1.0, 1.5, 2.0, 3.0])
    weights: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])
    num_samples: int = 4
    max_new_tokens: int = 48
    temperature: float = 1.0
    seed: int = 0
    prompts_per_batch: int = 4
    null_prompt: str = ""
    chat: bool = True
    embedder: str | None = None
    fluency: bool = True
    reference: tuple[float, float] = (0.0, 0.0)  # hypervolume reference point (quality, diversity)


def _point_key(settings: SweepSettings, family: str, value: float) -> str:
    model = settings.base if family == "cfg" else f"{settings.model_a}|{settings.model_b}"
    identity = {
        "family": family,
        "value": value,
        "model": model,
        "prompts": settings.prompts,
        "num_samples": settings.num_samples,
        "max_new_tokens": settings.max_new_tokens,
        "temperature": settings.temperature,
        "seed": settings.seed,
        "prompts_per_batch": settings.prompts_per_batch,
        "null_prompt": settings.null_prompt,
        "chat": settings.chat,
        "embedder": settings.embedder,
        "fluency": settings.fluency,
    }
    digest = hashlib.sha1(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]
    return f"{family}-{value:g}-{digest}"


def run_sweep(settings: SweepSettings) -> dict:
    from trl_diversity.rewards.embedder import load_embedder

    out = Path(settings.output_dir)
    (out / "points").mkdir(parents=True, exist_ok=True)
    plan = [("cfg", g) for g in settings.guidance_scales] + [("merge", w) for w in settings.weights]
    embedder = load_embedder(settings.embedder, device="cpu")
    fluency = None
    points = []
    bar = tqdm(plan, desc="sweep", unit="point", position=0)
    for family, value in bar:
        bar.set_postfix_str(f"{family} {value:g}")
        cache = out / "points" / f"{_point_key(settings, family, value)}.json"
        if cache.is_file():
            points.append(json.loads(cache.read_text()))
            continue
        if settings.fluency and fluency is None:
            fluency = load_generation_model(settings.base)
        model_path = settings.base if family == "cfg" else _merged_model(settings, value, out)
        model, tokenizer = load_generation_model(model_path)
        label = f"CFG {value:g}" if family == "cfg" else f"LERP w={value:g}"
        records = list(
            generate_records(
                model,
                tokenizer,
                settings.prompts,
                num_samples=settings.num_samples,
                max_new_tokens=settings.max_new_tokens,
                guidance_scale=value if family == "cfg" else 1.0,
                null_prompt=settings.null_prompt,
                chat=settings.chat,
                temperature=settings.temperature,
                seed=settings.seed,
                prompts_per_batch=settings.prompts_per_batch,
                label=label,
                progress=False,
            )
        )
        write_jsonl(records, cache.with_suffix(".jsonl"))
        entry = summarize(records, embedder, fluency=fluency, chat=settings.chat)[label]
        point = {"family": family, "value": value, "label": label, **entry}
        _write_json(cache, point)
        points.append(point)
        del model
        gc.collect()
    return finish(points, settings)


def _merged_model(settings: SweepSettings, weight: float, out: Path) -> str:
    target = out / "models" / f"lerp-{weight:g}"
    if not target.exists():
        lerp_merge(settings.model_a, settings.model_b, weight, target, base=settings.base)
    return str(target)


def finish(points: list[dict], settings: SweepSettings) -> dict:
    """Pareto flags, hypervolumes, and the JSON, Markdown and PNG reports."""
    out = Path(settings.output_dir)
    coordinates = [(p["metrics"][QUALITY]["mean"], p["metrics"][DIVERSITY]["mean"]) for p in points]
    overall = pareto_mask(coordinates)
    fronts = {}
    for family in ("cfg", "merge"):
        members = [i for i, p in enumerate(points) if p["family"] == family]
        own = pareto_mask([coordinates[i] for i in members])
        for i, keep in zip(members, own):
            points[i]["pareto_in_family"] = keep
        fronts[family] = {
            "hypervolume": hypervolume([coordinates[i] for i in members], settings.reference),
            "points": [points[i]["label"] for i, keep in zip(members, own) if keep],
        }
    for point, keep in zip(points, overall):
        point["pareto_overall"] = keep
    result = {
        "settings": {k: v for k, v in asdict(settings).items() if k != "prompts"},
        "num_prompts": len(settings.prompts),
        "quality_axis": QUALITY,
        "diversity_axis": DIVERSITY,
        "reference_point": list(settings.reference),
        "fronts": fronts,
        "points": [{k: v for k, v in p.items() if k != "per_prompt"} for p in points],
    }
    _write_json(out / "sweep.json", result)
    write_text_atomic(out / "sweep.md", sweep_markdown(result) + "\n")
    from trl_diversity.toolkit.plotting import plot_fronts

    plot_fronts(result, out / "sweep.png")
    return result


def sweep_markdown(result: dict) -> str:
    ref = result["reference_point"]
    lines = [
        f"Quality-diversity sweep on {result['num_prompts']} prompts x {result['settings']['num_samples']} samples. "
        f"Quality: {result['quality_axis']}; diversity: {result['diversity_axis']}; 95% bootstrap CIs over prompts.",
        "",
        "| point | quality | diversity | fluency NLL | forward passes / token | tokens / s | Pareto (family) | Pareto (all) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for p in result["points"]:
        q, d = p["metrics"][QUALITY], p["metrics"][DIVERSITY]
        nll = p["metrics"].get("fluency_nll")
        nll_text = "" if nll is None else f"{nll['mean']:.2f}"
        speed = p.get("tokens_per_second")
        speed_text = "" if speed is None else f"{speed:.1f}"
        family_front, overall_front = ("yes" if p[key] else "no" for key in ("pareto_in_family", "pareto_overall"))
        lines.append(
            f"| {p['label']} | {q['mean']:.3f} [{q['low']:.3f}, {q['high']:.3f}] | "
            f"{d['mean']:.3f} [{d['low']:.3f}, {d['high']:.3f}] | {nll_text} | "
            f"{p['forward_passes_per_token']} | {speed_text} | {family_front} | {overall_front} |"
        )
    lines += ["", f"Hypervolume against the reference point (quality, diversity) = ({ref[0]:g}, {ref[1]:g}):", ""]
    for family, front in result["fronts"].items():
        name = "CFG on the base model" if family == "cfg" else "weight interpolation (LERP)"
        lines.append(f"- {name}: {front['hypervolume']:.4f} (front: {', '.join(front['points'])})")
    return "\n".join(lines)


def _write_json(path: Path, data) -> None:
    write_text_atomic(path, json.dumps(data, indent=2))
