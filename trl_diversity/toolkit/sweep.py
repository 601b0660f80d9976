"""The quality-diversity sweep: CFG at several guidance scales on the base model, against weight interpolation
between a quality-focused and a diversity-focused finetune (no CFG, one forward pass per token).

Every point is generated and evaluated on the same prompts, then cached under `<output>/points/` by a key of its
settings, so a re-run with one more point only computes that point. The merged model of each weight is kept under
`<output>/models/lerp-<w>-<pair>/` (`<pair>` a short hash of the two finetunes and the base), ready to use. Outputs:
`sweep.json`, `sweep.md` (every point, its cost, whether it is Pareto-optimal, each front's hypervolume) and
`sweep.png` (the fronts with 95% CIs).
"""

from __future__ import annotations

import gc
import hashlib
import json
import shutil
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
    # A merge point depends on the base too: LoRA adapters are merged onto `settings.base`.
    model = settings.base if family == "cfg" else f"{settings.model_a}|{settings.model_b}|{settings.base}"
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


class PointEvaluator:
    """Generates and evaluates one point (a guidance scale of the base, or a merge weight of the two finetunes) at a
    time, and caches each under `<output_dir>/points/` by a key of everything that changes it.

    Shared by the sweep and the dial (`toolkit/dial.py`), so each reuses the points the other computed. The embedder
    and the fluency model load on the first point that is not cached. A merge point's model is written to
    `<output_dir>/models/lerp-<w>-<pair>/`; with `keep_models=False` it is deleted once evaluated (unless it was
    there already).
    """

    def __init__(self, settings: SweepSettings, keep_models: bool = True):
        self.settings = settings
        self.out = Path(settings.output_dir)
        (self.out / "points").mkdir(parents=True, exist_ok=True)
        self.keep_models = keep_models
        self._embedder = None
        self._fluency = None

    def cache_path(self, family: str, value: float) -> Path:
        return self.out / "points" / f"{_point_key(self.settings, family, value)}.json"

    def is_cached(self, family: str, value: float) -> bool:
        return self.cache_path(family, value).is_file()

    def __call__(self, family: str, value: float) -> dict:
        cache = self.cache_path(family, value)
        if cache.is_file():
            return json.loads(cache.read_text())
        settings = self.settings
        if self._embedder is None:
            from trl_diversity.rewards.embedder import load_embedder

            self._embedder = load_embedder(settings.embedder, device="cpu")
        if settings.fluency and self._fluency is None:
            self._fluency = load_generation_model(settings.base)
        created = None
        if family == "cfg":
            model_path = settings.base
        else:
            model_path = self.merged_model_path(value)
            if not model_path.exists():
                created = lerp_merge(settings.model_a, settings.model_b, value, model_path, base=settings.base)
        model, tokenizer = load_generation_model(str(model_path))
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
        entry = summarize(records, self._embedder, fluency=self._fluency, chat=settings.chat)[label]
        point = {"family": family, "value": value, "label": label, **entry}
        _write_json(cache, point)
        del model
        gc.collect()
        if created is not None and not self.keep_models:
            shutil.rmtree(created, ignore_errors=True)
        return point

    def merged_model_path(self, weight: float) -> Path:
        """Where the merge at `weight` of this pair (and base) lives: a stale merge of other models is never reused."""
        pair = f"{self.settings.model_a}|{self.settings.model_b}|{self.settings.base}"
        return self.out / "models" / f"lerp-{weight:g}-{hashlib.sha1(pair.encode()).hexdigest()[:8]}"


def run_sweep(settings: SweepSettings) -> dict:
    evaluate = PointEvaluator(settings)
    plan = [("cfg", g) for g in settings.guidance_scales] + [("merge", w) for w in settings.weights]
    points = []
    bar = tqdm(plan, desc="sweep", unit="point", position=0)
    for family, value in bar:
        bar.set_postfix_str(f"{family} {value:g}")
        points.append(evaluate(family, value))
    return finish(points, settings)


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
