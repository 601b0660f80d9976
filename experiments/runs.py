"""What a run of the experiments is: the finetunes, the budget, the evaluated points and a run's variant, with the cache
keys that tie each result to everything that determines it. Shared by `reproduce`, `compare_finetunes` and
`lever_search`: a cached point or training log is found by the same key whichever script asks."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

# The repository root: results live under experiments/results/ and docs/results/.
ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Finetune:
    """One finetune of the experiment; every field goes into its cache key."""

    name: str
    diversity_coef: float
    max_steps: int
    learning_rate: float = 2e-4
    guidance_scale: float = 3.0
    distill_divergence: str = "reverse_kl"
    num_generations: int = 4
    per_device_train_batch_size: int = 8
    max_completion_length: int = 48
    seed: int = 0
    algorithm: str = "grpo"  # TRL's GRPO or RLOO under the method (`train --algorithm`)
    diversity_target: str | None = None  # a diversity target held by the controller; diversity_coef starts it
    entropy_coef: float = 0.0  # TRL's own entropy bonus (GRPOConfig.entropy_coef): the baseline a TRL user tries first
    diversity_quality: str = "none"  # "teacher_likelihood": the quality x diversity reward (a lever, #23)
    diversity_target_rate: float = 0.1  # the controller's gain, with a diversity_target

    def key(self) -> str:
        fields = asdict(self)
        # Fields added after the first runs enter the key only when set, so that those runs keep their keys (and
        # their cached points).
        for name, default in LATE_FIELDS.items():
            if fields[name] == default:
                del fields[name]
        return hashlib.sha1(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:10]


LATE_FIELDS = {
    "algorithm": "grpo",
    "diversity_target": None,
    "entropy_coef": 0.0,
    "diversity_quality": "none",
    "diversity_target_rate": 0.1,
}


@dataclass(frozen=True)
class Budget:
    num_prompts: int
    num_samples: int
    max_new_tokens: int
    quality: Finetune
    diversity: Finetune
    guidance_scales: tuple[float, ...] = (1.0, 1.5, 2.0, 3.0, 4.0, 5.0)
    # Down to T = 0.3 so that temperature's dial reaches the finetunes' adherence (0.56-0.62): T = 0.5 stopped at 0.576
    # and left no shared range to compare fronts on (#23).
    temperatures: tuple[float, ...] = (1.0, 0.85, 0.7, 0.5, 0.4, 0.3)
    weights: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    prompts_per_batch: int = 8
    save_steps: int = 8
    # The bundled prompt set the points are judged on: "eval" (creative writing, like the training prompts) or "open"
    # (short open questions of another kind, #23 goal e). Points are cached by their prompts, so the sets never mix.
    eval_prompts: str = "eval"

    def prompts(self) -> list[str]:
        from trl_diversity.data import load_prompts

        return list(load_prompts(self.eval_prompts, limit=self.num_prompts)["prompt"])


def _finetunes(steps: int, beta: float, **common) -> dict[str, Finetune]:
    """The quality model (beta = 0) and the diversity model, from the same base, seed and budget."""
    return {
        "quality": Finetune("quality", 0.0, steps, **common),
        "diversity": Finetune("diversity", beta, steps, **common),
    }


BUDGETS = {
    # Every stage, at sizes that only check the plumbing.
    "small": Budget(
        num_prompts=3,
        num_samples=3,
        max_new_tokens=8,
        **_finetunes(2, 15.0, num_generations=2, per_device_train_batch_size=4, max_completion_length=8),
        guidance_scales=(1.0, 2.0),
        temperatures=(1.0, 0.7),
        weights=(0.0, 0.5, 1.0),
        prompts_per_batch=3,
        save_steps=1,
    ),
    # The real experiment. 48 eval prompts x 6 samples: 6 samples give 15 pairs per prompt for the diversity
    # metrics and k=6 for the partition count; 48 prompts (4 of each of the 12 forms) keep paired CIs on adherence
    # near +-0.02 (the paired CIs measured on 40 prompts) while a point costs minutes, not tens of minutes. 48 new tokens as in
    # training. 80 steps = 3.3x the default job's budget (160 training prompts, each seen once): what fits beside the
    # evaluation in one 2-3 hour run on 2 CPU cores.
    "full": Budget(
        num_prompts=48,
        num_samples=6,
        max_new_tokens=48,
        **_finetunes(80, 15.0),
    ),
}


@dataclass(frozen=True)
class Point:
    family: str  # "cfg", "temperature" or "lerp"
    value: float  # gamma, T or w
    guidance_scale: float = 1.0
    temperature: float = 1.0

    @property
    def label(self) -> str:
        return {"cfg": f"CFG {self.value:g}", "temperature": f"T={self.value:g}", "lerp": f"LERP w={self.value:g}"}[
            self.family
        ]


def is_base_sampler(point: Point) -> bool:
    """T = 1 without CFG: one model and one sampler, whichever family lists it (CFG 1 and T=1 share one cache)."""
    return point.family in ("cfg", "temperature") and point.guidance_scale == 1.0 and point.temperature == 1.0


def point_file_stem(point: Point) -> str:
    return "base-1" if is_base_sampler(point) else f"{point.family}-{point.value:g}"


def lerp_models(weight: float, budget: Budget) -> list[str]:
    """The finetunes a LERP point is made of: w = 0 is the quality model alone, so two diversity models share it."""
    if weight == 0.0:
        return [budget.quality.key()]
    if weight == 1.0:
        return [budget.diversity.key()]
    return [budget.quality.key(), budget.diversity.key()]


def point_key(point: Point, budget: Budget, prompts: list[str]) -> str:
    identity = {
        "point": asdict(point),
        "prompts": prompts,
        "num_samples": budget.num_samples,
        "max_new_tokens": budget.max_new_tokens,
        "prompts_per_batch": budget.prompts_per_batch,
        "seed": 0,
        "models": lerp_models(point.value, budget) if point.family == "lerp" else "base",
    }
    if is_base_sampler(point):
        identity["point"] = "base"
    return hashlib.sha1(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Variant:
    """How a run differs from the budget's experiment; every part defaults to "as the budget has it".

    - `diversity_coef`, `diversity_target`: another diversity model (the quality model and the base points are
      unchanged, so only the new finetune and its LERP points are computed);
    - `algorithm`: both finetunes on another TRL algorithm (the base points are reused);
    - `seed`: both finetunes with another training seed (the evaluation's sampling seed stays 0, so points stay
      paired with every other run's);
    - `entropy_coef`: in place of the diversity model, distillation with TRL's entropy bonus and no diversity reward
      (`diversity_coef = 0`): the baseline a TRL user reaches for first;
    - `distill_divergence`: the diversity model distils with another divergence (a lever; the quality model keeps
      the budget's);
    - `diversity_quality`: the diversity model's reward is quality x diversity (a lever);
    - `diversity_target_rate`: the gain of the target's controller (with `diversity_target`).
    """

    diversity_coef: float | None = None
    diversity_target: str | None = None
    algorithm: str | None = None
    seed: int | None = None
    entropy_coef: float | None = None
    distill_divergence: str | None = None
    diversity_quality: str | None = None
    diversity_target_rate: float | None = None

    def apply(self, budget: Budget) -> Budget:
        quality, diversity = budget.quality, budget.diversity
        if self.diversity_coef is not None:
            diversity = replace(diversity, diversity_coef=self.diversity_coef)
        if self.diversity_target is not None:
            diversity = replace(diversity, diversity_target=self.diversity_target)
        if self.entropy_coef is not None:
            diversity = replace(diversity, diversity_coef=0.0, entropy_coef=self.entropy_coef)
        if self.distill_divergence is not None:
            diversity = replace(diversity, distill_divergence=self.distill_divergence)
        if self.diversity_quality is not None:
            diversity = replace(diversity, diversity_quality=self.diversity_quality)
        if self.diversity_target_rate is not None:
            diversity = replace(diversity, diversity_target_rate=self.diversity_target_rate)
        for name in ("algorithm", "seed"):
            if getattr(self, name) is not None:
                quality = replace(quality, **{name: getattr(self, name)})
                diversity = replace(diversity, **{name: getattr(self, name)})
        if (quality, diversity) == (budget.quality, budget.diversity):
            return budget
        return replace(budget, quality=quality, diversity=diversity)

    def suffix(self, budget: Budget) -> str:
        """`_beta50`, `_target-initial`, `_rloo`, `_seed1`, joined: the report's and the summary's name."""
        parts = []
        if self.diversity_coef is not None and self.diversity_coef != budget.diversity.diversity_coef:
            parts.append(f"beta{exact(self.diversity_coef)}")
        if self.diversity_target is not None:
            parts.append(f"target-{self.diversity_target.replace('*', 'x')}")
        if self.diversity_target_rate not in (None, budget.diversity.diversity_target_rate):
            parts.append(f"rate{exact(self.diversity_target_rate)}")
        if self.algorithm not in (None, budget.quality.algorithm):
            parts.append(self.algorithm)
        if self.entropy_coef is not None:
            parts.append(f"entropy{exact(self.entropy_coef)}")
        if self.distill_divergence not in (None, budget.diversity.distill_divergence):
            parts.append(self.distill_divergence)
        if self.diversity_quality not in (None, budget.diversity.diversity_quality):
            parts.append(f"quality-{self.diversity_quality}")
        if self.seed not in (None, budget.quality.seed):
            parts.append(f"seed{self.seed}")
        return "".join(f"_{part}" for part in parts)


def with_diversity_coef(budget: Budget, diversity_coef: float | None) -> Budget:
    """The budget with another diversity model's coefficient (see `Variant`)."""
    return Variant(diversity_coef=diversity_coef).apply(budget)


def exact(number: float) -> str:
    """The shortest text that reads back as `number` (`50`, `12.5`, `15.0000001`): for file names and commands."""
    text = f"{number:g}"
    return text if float(text) == number else repr(number)


def command_of(budget_name: str, variant: Variant | float | None) -> str:
    if not isinstance(variant, Variant):
        variant = Variant(diversity_coef=variant)
    budget = BUDGETS[budget_name]
    flags = f"--budget {budget_name}"
    if variant.diversity_coef is not None and variant.diversity_coef != budget.diversity.diversity_coef:
        flags += f" --diversity_coef {exact(variant.diversity_coef)}"
    if variant.diversity_target is not None:
        flags += f" --diversity_target {variant.diversity_target}"
    if variant.diversity_target_rate not in (None, budget.diversity.diversity_target_rate):
        flags += f" --diversity_target_rate {exact(variant.diversity_target_rate)}"
    if variant.algorithm not in (None, budget.quality.algorithm):
        flags += f" --algorithm {variant.algorithm}"
    if variant.entropy_coef is not None:
        flags += f" --entropy_coef {exact(variant.entropy_coef)}"
    if variant.distill_divergence not in (None, budget.diversity.distill_divergence):
        flags += f" --distill_divergence {variant.distill_divergence}"
    if variant.diversity_quality not in (None, budget.diversity.diversity_quality):
        flags += f" --diversity_quality {variant.diversity_quality}"
    if variant.seed not in (None, budget.quality.seed):
        flags += f" --seed {variant.seed}"
    return flags
