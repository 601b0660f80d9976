"""Reproduce the paper's claims on the embedded default model (SmolLM2-135M-Instruct), resumably.

    python -m experiments.reproduce --budget full    # the real experiment (hours on 2 CPU cores; resumable)
    python -m experiments.reproduce --budget small   # every stage at toy sizes (minutes; runs as a test)
    python -m experiments.reproduce --budget full --report_only   # rebuild the report from the cached points
    python -m experiments.reproduce --budget full --diversity_coef 50   # another diversity model, same everything else
    python -m experiments.reproduce --budget full --seed 1 --endpoints_only   # the two finetunes' own points only

Stages, each cached so that a re-run computes only what is missing:
1. two LoRA finetunes from the same base, seed and budget: `beta = 0` (pure CFG distillation, the quality model)
   and `beta > 0` (the diversity model); each checkpoints, and its training log is kept as JSON;
2. evaluation points on the same eval prompts: CFG on the base at each `gamma`, temperature on the base at each T,
   and the weight interpolation (LERP) of the two finetunes at each w; each point's per-prompt metrics are cached
   under `<results>/points/` by a hash of everything that determines it;
3. the report: a claims table with paired bootstrap CIs, front gaps at matched quality, plots and training curves.

The finetunes' checkpoints live under `outputs/` (not committed); the per-point JSON and the training logs are small
and committed, so the report can be rebuilt without retraining.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from experiments.runs import (
    BUDGETS,
    ROOT,
    Budget,
    Finetune,
    Point,
    Variant,
    command_of,
    is_base_sampler,
    point_file_stem,
    point_key,
)


@dataclass
class Progress:
    """Prints each stage with the elapsed time and an estimate of the time left (from measured rates)."""

    plan: list[tuple[str, float]]  # (stage, estimated work units), in any order
    seconds_per_unit: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)
    done: int = 0

    def __post_init__(self):
        self.remaining = list(self.plan)

    def begin(self, stage: str) -> None:
        left = sum(self._estimate(kind, units) for kind, units in self.remaining)
        elapsed = time.perf_counter() - self.started
        print(
            f"[{self.done + 1}/{len(self.plan)}] {stage}  (elapsed {elapsed / 60:.1f} min, "
            f"about {left / 60:.0f} min left)",
            flush=True,
        )

    def finish(self, kind: str, units: float, seconds: float | None) -> None:
        if seconds is not None and units > 0:
            self.seconds_per_unit[kind] = seconds / units
        if (kind, units) in self.remaining:  # stages finish in any order (finetunes are trained when first needed)
            self.remaining.remove((kind, units))
        self.done += 1

    def _estimate(self, kind: str, units: float) -> float:
        # Priors measured on the 2-core CPU machine; replaced by this run's own rates once a stage of a kind ran.
        prior = {"train": 16.0, "generate": 0.012}[kind]
        return units * self.seconds_per_unit.get(kind, prior)


# ---------------------------------------------------------------------------------------------------------------
# Stage 1: the finetunes


def train_finetune(
    finetune: Finetune, budget: Budget, checkpoints: Path, results: Path, for_run: str | None = None
) -> tuple[Path, float | None]:
    """Train (or resume, or reuse) one finetune; return its adapter folder and the seconds spent (None if cached).
    `for_run`: the run that needs it (its reproduce.py flags), recorded when it is a retrain."""
    from trl_diversity.cli.train import build_trainer, parse

    folder = checkpoints / f"{finetune.name}-{finetune.key()}"
    log_file = results / "training" / f"{finetune.name}-{finetune.key()}.json"
    if (folder / "adapter_model.safetensors").is_file() and log_file.is_file():
        return folder, None
    started = time.perf_counter()
    flags = {
        "output_dir": folder,
        "max_steps": finetune.max_steps,
        "learning_rate": finetune.learning_rate,
        "guidance_scale": finetune.guidance_scale,
        "distill_divergence": finetune.distill_divergence,
        "diversity_coef": finetune.diversity_coef,
        "num_generations": finetune.num_generations,
        "per_device_train_batch_size": finetune.per_device_train_batch_size,
        "max_completion_length": finetune.max_completion_length,
        "seed": finetune.seed,
        **({"algorithm": finetune.algorithm} if finetune.algorithm != "grpo" else {}),
        **({"diversity_target": finetune.diversity_target} if finetune.diversity_target is not None else {}),
        **({"entropy_coef": finetune.entropy_coef} if finetune.entropy_coef else {}),
        **({"diversity_quality": finetune.diversity_quality} if finetune.diversity_quality != "none" else {}),
        **({"diversity_target_rate": finetune.diversity_target_rate} if finetune.diversity_target_rate != 0.1 else {}),
        "save_steps": budget.save_steps,
        "report_prompts": 0,
        "disable_tqdm": "true",
    }
    argv = [item for name, value in flags.items() for item in (f"--{name}", str(value))]
    trainer = build_trainer(*parse(argv))
    resume = any(folder.glob("checkpoint-*"))
    trainer.train(resume_from_checkpoint=True if resume else None)
    if trainer.interrupted:
        sys.exit(f"Interrupted while training {finetune.name}; rerun the same command to resume from its checkpoint.")
    trainer.save_model(str(folder))
    from trl_diversity.atomic import write_text_atomic

    log = json.loads(
        json.dumps({"finetune": asdict(finetune), "key": finetune.key(), "log_history": trainer.state.log_history})
    )
    if log_file.is_file():
        log = record_retrain(json.loads(log_file.read_text()), log, resumed=resume, for_run=for_run)
    write_text_atomic(log_file, json.dumps(log, indent=1))
    del trainer
    return folder, time.perf_counter() - started


TIMING = ("runtime", "per_second", "step_time")  # wall-clock log entries, different between any two runs


def record_retrain(first: dict, again: dict, resumed: bool = False, for_run: str | None = None) -> dict:
    """A finetune trained again because its checkpoint was gone (a new machine) while its log and points were cached:
    keep the first run's log, which the cached points came from, and add this run's compute (`resumed`: it went on
    from a checkpoint, so its time is a part), its own curve, and how far that curve is from the first: bit for bit
    the same, or the largest relative difference of any logged number (the wall-clock ones aside). Other CPUs'
    kernels round differently, so a retrain on another machine is close, not identical. `for_run`: the reproduce.py
    flags of the run whose merges needed it (only that run's report has points from it)."""

    def curve(log: dict) -> list[dict]:
        return [{k: v for k, v in row.items() if not any(t in k for t in TIMING)} for row in log["log_history"]]

    first_curve, again_curve = curve(first), curve(again)
    same = first_curve == again_curve
    differences = [
        abs(a[k] - b[k]) / max(abs(a[k]), abs(b[k]))
        for a, b in zip(first_curve, again_curve)
        for k in a.keys() & b.keys()
        if isinstance(a[k], float) and isinstance(b[k], float) and a[k] != b[k]
    ]
    if len(first_curve) != len(again_curve):
        differences.append(float("inf"))
    runtime = next((row["train_runtime"] for row in again["log_history"] if "train_runtime" in row), None)
    retrain = {"train_runtime": runtime, "same_curve_as_first": same, "resumed": resumed, "for_run": for_run}
    retrain |= {"max_relative_difference": max(differences, default=0.0), "log_history": again["log_history"]}
    first.setdefault("retrains", []).append(retrain)
    if not same:
        print(
            f"  note: retraining {first['finetune']['name']} gave a curve within a relative "
            f"{retrain['max_relative_difference']:.1e} of its first run's, not bit-identical; its cached points come "
            "from the first run, merges from this one",
            flush=True,
        )
    return first


# ---------------------------------------------------------------------------------------------------------------
# Stage 2: the evaluated points


def evaluation_priority(point: Point) -> tuple[int, float]:
    """Finetunes and the strong CFG points (claims a, b), then the base, then the rest of each front (claim c)."""
    rank = {("lerp", 0.0): 0, ("lerp", 1.0): 1, ("cfg", 3.0): 2, ("cfg", 2.0): 3, ("lerp", 0.5): 4}
    if is_base_sampler(point):
        return (5, 0.0)
    return (rank.get((point.family, point.value), 6), -point.value if point.family == "temperature" else point.value)


def points_of(budget: Budget) -> list[Point]:
    return (
        [Point("cfg", g, guidance_scale=g) for g in budget.guidance_scales]
        + [Point("temperature", t, temperature=t) for t in budget.temperatures]
        + [Point("lerp", w) for w in budget.weights]
    )


def evaluate_point(point: Point, model_path: str, budget: Budget, prompts: list[str], context: dict) -> dict:
    from trl_diversity.toolkit.evaluation import summarize
    from trl_diversity.toolkit.generation import generate_records, load_generation_model

    model, tokenizer = load_generation_model(model_path)
    records = list(
        generate_records(
            model,
            tokenizer,
            prompts,
            num_samples=budget.num_samples,
            max_new_tokens=budget.max_new_tokens,
            guidance_scale=point.guidance_scale,
            temperature=point.temperature,
            seed=0,
            prompts_per_batch=budget.prompts_per_batch,
            label=point.label,
            progress=False,
        )
    )
    entry = summarize(records, context["embedder"], fluency=context["fluency"])[point.label]
    # Every completion is kept (about 80 KB a point), so that a judge added later needs no regeneration.
    completions = [[r["completion"] for r in records if r["prompt"] == prompt] for prompt in prompts]
    return {
        "family": point.family,
        "value": point.value,
        "label": point.label,
        **entry,
        "examples": completions[0],
        "completions": completions,
    }


# A cached point without one of these was evaluated before that judge existed: it is evaluated again. Generation is
# seeded, so the same completions come back and only the new judge's values are added.
REQUIRED_METRICS = ("adherence", "pairwise_diversity", "base_lm_diversity", "partitions", "fluency_nll")


def is_cached(path: Path) -> bool:
    if not path.is_file():
        return False
    metrics = json.loads(path.read_text())["metrics"]
    return all(name in metrics for name in REQUIRED_METRICS)


def finetunes_of(weight: float) -> list[str]:
    """The finetunes a LERP point is made of (by name): w = 0 is the quality model, w = 1 the diversity model."""
    return ["quality"] if weight == 0.0 else ["diversity"] if weight == 1.0 else ["quality", "diversity"]


def lerp_model(weight: float, adapters: dict[str, Path], checkpoints: Path, budget: Budget) -> str:
    """The finetune itself at w = 0 and w = 1, else the exact LoRA interpolation (written once)."""
    from trl_diversity.toolkit.merging import lerp_merge

    if weight == 0.0:
        return str(adapters["quality"])
    if weight == 1.0:
        return str(adapters["diversity"])
    target = checkpoints / f"lerp-{weight:g}-{budget.quality.key()}-{budget.diversity.key()}"
    if not target.exists():
        lerp_merge(adapters["quality"], adapters["diversity"], weight, target)
    return str(target)


# ---------------------------------------------------------------------------------------------------------------
# Driver


def run(
    budget_name: str,
    results: Path,
    checkpoints: Path,
    report: Path,
    report_only: bool,
    variant: Variant | float | None = None,
    endpoints_only: bool = False,
    finetunes_only: bool = False,
    eval_prompts: str = "eval",
) -> dict | None:
    from trl_diversity.atomic import write_text_atomic

    if not isinstance(variant, Variant):  # a bare number: another diversity model's coefficient
        variant = Variant(diversity_coef=variant)
    budget = replace(variant.apply(BUDGETS[budget_name]), eval_prompts=eval_prompts)
    prompts = budget.prompts()
    points = points_of(budget)
    if endpoints_only:
        # The finetunes' own points (w = 0, w = 1) and the base model's: no interior LERP point, so no finetune is
        # trained only to be merged. That answers claims (a) and (b) for a second seed at half the compute.
        points = [p for p in points if p.family != "lerp" or p.value in (0.0, 1.0)]
    if finetunes_only:
        points = [p for p in points if p.family == "lerp" and p.value in (0.0, 1.0)]
    (results / "points").mkdir(parents=True, exist_ok=True)
    cache = {p: results / "points" / f"{point_file_stem(p)}-{point_key(p, budget, prompts)}.json" for p in points}
    if report_only:
        missing = [p.label for p in points if not is_cached(cache[p])]
        if missing:
            sys.exit(
                f"--report_only needs every point cached with every judge; missing or judged before a newer judge: "
                f"{', '.join(missing)}. Run without --report_only to evaluate them."
            )
    else:
        generate_units = budget.num_prompts * budget.num_samples * budget.max_new_tokens
        evaluations = [("generate", generate_units * (2 if p.guidance_scale != 1 else 1)) for p in points]
        # Only the finetunes an uncached point needs are trained.
        needed = {
            name for p in points if p.family == "lerp" and not is_cached(cache[p]) for name in finetunes_of(p.value)
        }
        plan = [("train", getattr(budget, name).max_steps) for name in ("quality", "diversity") if name in needed]
        progress = Progress(plan + evaluations)
        adapters: dict[str, Path] = {}

        def ensure_trained(finetune: Finetune) -> None:
            """Train a finetune when a point first needs it: a cached point needs none, and the claims' points come
            first (a diversity model is trained and judged before the quality model is retrained for LERP)."""
            if finetune.name in adapters:
                return
            target = f", diversity_target={finetune.diversity_target}" if finetune.diversity_target else ""
            progress.begin(
                f"finetune {finetune.name} ({finetune.algorithm}, diversity_coef={finetune.diversity_coef:g}{target}, "
                f"seed {finetune.seed}, {finetune.max_steps} steps)"
            )
            adapters[finetune.name], seconds = train_finetune(
                finetune, budget, checkpoints, results, for_run=command_of(budget_name, variant)
            )
            progress.finish("train", finetune.max_steps, seconds)

        context = None
        # The points the claims rest on first, so that an interrupted run has already answered the most.
        order = sorted(zip(points, evaluations), key=lambda item: evaluation_priority(item[0]))
        for point, (kind, units) in order:
            if is_cached(cache[point]):
                progress.begin(f"evaluate {point.label}")
                progress.finish(kind, units, None)
                continue
            if point.family == "lerp":
                for name in finetunes_of(point.value):
                    ensure_trained(getattr(budget, name))
            progress.begin(f"evaluate {point.label}")
            if context is None:
                from trl_diversity.rewards.embedder import load_embedder
                from trl_diversity.toolkit.generation import load_generation_model

                context = {"embedder": load_embedder(None, device="cpu"), "fluency": load_generation_model("default")}
            started = time.perf_counter()
            model_path = (
                "default" if point.family != "lerp" else lerp_model(point.value, adapters, checkpoints, budget)
            )
            previous = json.loads(cache[point].read_text()) if cache[point].is_file() else None
            entry = evaluate_point(point, model_path, budget, prompts, context)
            if previous is not None:
                same = previous.get("examples") == entry["examples"]
                print(f"  re-evaluated for a new judge; same completions as before: {same}", flush=True)
            write_text_atomic(cache[point], json.dumps(entry, indent=1))
            progress.finish(kind, units, time.perf_counter() - started)
        print(f"All stages done in {(time.perf_counter() - progress.started) / 60:.1f} min.", flush=True)
    if endpoints_only or finetunes_only:
        print(
            "--endpoints_only: no report (it needs the LERP front). `python -m experiments.compare_finetunes "
            "--diversity_models` compares the seed-1 and RLOO runs it knows; rerun without --endpoints_only for the "
            "full report of any run.",
            flush=True,
        )
        return None

    from experiments.reproduction_report import write_report

    # The shared base point is labelled per family (CFG 1 / T=1) here, whichever family evaluated it first.
    evaluated = {
        p: {**json.loads(cache[p].read_text()), "family": p.family, "value": p.value, "label": p.label} for p in points
    }
    logs = {}
    for finetune in (budget.quality, budget.diversity):
        log_file = results / "training" / f"{finetune.name}-{finetune.key()}.json"
        if log_file.is_file():
            logs[finetune.name] = json.loads(log_file.read_text())
    summary = results / f"summary{variant.suffix(BUDGETS[budget_name])}.json"
    return write_report(command_of(budget_name, variant), budget, prompts, evaluated, logs, report, summary)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", choices=list(BUDGETS), default="small")
    parser.add_argument("--results", default=None, help="cached points and training logs (default: per budget)")
    parser.add_argument("--checkpoints", default=None, help="finetune checkpoints (default: outputs/reproduce-*)")
    parser.add_argument("--report", default=None, help="Markdown report; plots are written beside it")
    parser.add_argument("--report_only", action="store_true", help="rebuild the report from cached points only")
    parser.add_argument(
        "--diversity_coef",
        type=float,
        default=None,
        help="beta of the diversity model (default: the budget's, 15); the report gets a _beta<value> suffix",
    )
    parser.add_argument(
        "--diversity_target",
        default=None,
        help="a diversity model trained with this diversity_target (e.g. initial), the coefficient starting at the "
        "budget's diversity_coef; the report gets a _target-<value> suffix",
    )
    parser.add_argument(
        "--algorithm", choices=["grpo", "rloo"], default=None, help="both finetunes on this TRL algorithm (_rloo)"
    )
    parser.add_argument("--seed", type=int, default=None, help="both finetunes with this training seed (_seed<n>)")
    parser.add_argument(
        "--entropy_coef",
        type=float,
        default=None,
        help="the baseline of TRL's entropy bonus: in place of the diversity model, distillation with this "
        "entropy_coef and no diversity reward (_entropy<value>)",
    )
    parser.add_argument(
        "--distill_divergence",
        choices=["reverse_kl", "forward_kl", "jsd"],
        default=None,
        help="the diversity model distils with this divergence (_<divergence>)",
    )
    parser.add_argument(
        "--diversity_quality",
        choices=["none", "teacher_likelihood"],
        default=None,
        help="the diversity model's reward is quality x diversity, the quality being the CFG teacher's likelihood "
        "(_quality-<value>)",
    )
    parser.add_argument(
        "--endpoints_only",
        action="store_true",
        help="evaluate the two finetunes' own points (w = 0, w = 1) and the base model's, not the LERP interior, and "
        "write no report: a second seed's claims (a) and (b) without merging",
    )
    parser.add_argument(
        "--diversity_target_rate",
        type=float,
        default=None,
        help="with --diversity_target: the controller's gain (default 0.1; _rate<value>)",
    )
    parser.add_argument(
        "--finetunes_only",
        action="store_true",
        help="evaluate only the two finetunes' own points (w = 0, w = 1), no base point, and write no report: with "
        "--eval_prompts open, a diversity model's gain on prompts of another kind",
    )
    parser.add_argument(
        "--eval_prompts",
        choices=["eval", "open"],
        default="eval",
        help="the bundled prompt set the points are judged on: 'eval' (creative writing) or 'open' (short open "
        "questions of another kind, never used to choose anything)",
    )
    parser.add_argument(
        "--train_quality_only",
        action="store_true",
        help="train (or resume) the quality model (beta = 0) and stop: for a machine whose checkpoints are gone",
    )
    args = parser.parse_args(argv)
    if args.eval_prompts != "eval" and not (args.endpoints_only or args.finetunes_only):
        parser.error(
            f"--eval_prompts {args.eval_prompts} judges points for a comparison, not a report: add --finetunes_only "
            "(or --endpoints_only), then run python -m experiments.compare_finetunes --diversity_models --eval_prompts "
            f"{args.eval_prompts}"
        )
    if args.diversity_target_rate is not None and args.diversity_target is None:
        parser.error("--diversity_target_rate tunes the controller of a --diversity_target: add one, or drop it")
    if args.endpoints_only and args.report_only:
        parser.error("--endpoints_only writes no report and --report_only only writes one: give one of them")
    if args.diversity_coef is not None and not (math.isfinite(args.diversity_coef) and args.diversity_coef > 0):
        parser.error(
            f"--diversity_coef must be a finite number > 0 (the quality model is beta = 0), got {args.diversity_coef}"
        )
    if args.diversity_target is not None:
        from trl_diversity.trainer.diversity_controller import parse_diversity_target

        try:
            parse_diversity_target(args.diversity_target)
        except ValueError as error:
            parser.error(str(error))
    if args.entropy_coef is not None:
        if not (math.isfinite(args.entropy_coef) and args.entropy_coef > 0):
            parser.error(f"--entropy_coef must be a finite number > 0, got {args.entropy_coef}")
        if args.diversity_coef is not None or args.diversity_target is not None:
            parser.error("--entropy_coef replaces the diversity reward: drop --diversity_coef / --diversity_target")
    variant = Variant(
        args.diversity_coef,
        args.diversity_target,
        args.algorithm,
        args.seed,
        entropy_coef=args.entropy_coef,
        distill_divergence=args.distill_divergence,
        diversity_quality=args.diversity_quality,
        diversity_target_rate=args.diversity_target_rate,
    )
    full = args.budget == "full"
    results = Path(args.results or ROOT / "experiments" / "results" / f"reproduction-{args.budget}")
    checkpoints = Path(args.checkpoints or ROOT / "outputs" / f"reproduce-{args.budget}")
    if args.train_quality_only:
        budget = variant.apply(BUDGETS[args.budget])
        folder, seconds = train_finetune(
            budget.quality, budget, checkpoints, results, for_run=command_of(args.budget, variant)
        )
        print(f"Quality model: {folder} ({'cached' if seconds is None else f'{seconds / 60:.1f} min'})")
        return
    default_name = "reproduction" + variant.suffix(BUDGETS[args.budget])
    report = Path(args.report or (ROOT / "docs" / "results" if full else results) / f"{default_name}.md")
    judged = run(
        args.budget,
        results,
        checkpoints,
        report,
        args.report_only,
        variant,
        args.endpoints_only,
        finetunes_only=args.finetunes_only,
        eval_prompts=args.eval_prompts,
    )
    if judged is not None:
        print(f"Report: {report}")


if __name__ == "__main__":
    main()
