"""The configs of diversity-rewarded CFG distillation: TRL's GRPO or RLOO configuration plus the method's fields.

The method's fields, their help and their checks are declared once, in `DiversityCFGFields`; each config is that
mixin on top of one of TRL's online RL configs:

- `DiversityCFGConfig(DiversityCFGFields, GRPOConfig)`, for `DiversityCFGTrainer`;
- `DiversityCFGRLOOConfig(DiversityCFGFields, RLOOConfig)`, for `DiversityCFGRLOOTrainer`.

Every field of the TRL config keeps its meaning and its default (RLOO's `beta=0.05` and `num_generations=2`
included).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field, fields

from trl import GRPOConfig, RLOOConfig

from trl_diversity.defaults import DEFAULT_JOB_TRAINING
from trl_diversity.guidance import parse_guidance
from trl_diversity.rewards.registry import BUILTIN_GROUP_REWARDS, check_group_reward_name
from trl_diversity.trainer.divergence import DIVERGENCES
from trl_diversity.trainer.teacher_quality import DIVERSITY_QUALITIES


@dataclass
class DiversityCFGFields:
    """The method's fields and checks, mixed into a TRL config (it must come first among the bases).

    Names: the paper's `gamma` is `guidance_scale` and its `beta` is `diversity_coef`. TRL's own `beta` is the
    KL-to-reference coefficient and is unrelated.
    """

    guidance_scale: float = field(
        default=3.0,
        metadata={
            "help": "CFG scale (the paper's gamma) of the frozen teacher: logits l_u + gamma * (l_c - l_u). 1.0 "
            "means no guidance; values above 1 sharpen towards the prompt."
        },
    )
    guidance: str | None = field(
        default=None,
        metadata={
            "help": "The teacher's guidance beyond plain CFG, as logit arithmetic over contexts: terms "
            "'WEIGHT*NEGATIVE' joined by '+', NEGATIVE being null (the unconditional prompt), a quoted text "
            '("{prompt}" stands for the prompt) or layer:N (the model read out after N layers), then optionally '
            "'from M' (the first M generated tokens unguided). '2*null' is plain CFG at gamma 3. None: plain CFG "
            "at guidance_scale. Set this or guidance_scale, not both."
        },
    )
    distill_coef: float = field(
        default=1.0,
        metadata={"help": "Weight of the CFG-distillation loss. 0 turns distillation off (diversity-only RL)."},
    )
    distill_divergence: str = field(
        default="reverse_kl",
        metadata={
            "help": "Token-level divergence between the CFG teacher and the student: 'reverse_kl' "
            "(KL(student || teacher), the paper's reading), 'forward_kl' (KL(teacher || student)) or 'jsd'.",
            "choices": list(DIVERGENCES),
        },
    )
    distill_jsd_beta: float = field(
        default=0.5,
        metadata={
            "help": "Mixture weight b of the generalised JSD (only with distill_divergence='jsd'): "
            "m = (1 - b) * p_student + b * p_teacher. 0.5 is the symmetric JSD."
        },
    )
    diversity_coef: float = field(
        default=15.0,
        metadata={
            "help": "Weight of the diversity reward (the paper's beta): the advantage of each sample is "
            "diversity_coef * (r_i - b_i), not divided by any standard deviation. 0 = pure CFG distillation (the "
            "diversity is still measured and logged while distill_coef > 0). With both coefficients 0 the trainer is "
            "plain GRPO on reward_funcs."
        },
    )
    diversity_reward: str = field(
        default="embedding",
        metadata={
            "help": "The diversity term, a group reward r_i over each prompt's samples. 'embedding': mean 1 - cos "
            "to the other samples with diversity_embedder (the paper's); 'lexical': mean 1 - Jaccard overlap of word "
            "1-2-grams (no model); 'partition': share of the other samples not equivalent to it under the unigram "
            "rule of evaluation's distinct_k (no model); or 'module:function' for your own group reward. The "
            "baseline b_i is exact leave-one-out for the built-ins (pairwise means), RLOO (mean of the other k-1 "
            "rewards) otherwise."
        },
    )
    diversity_embedder: str | None = field(
        default=None,
        metadata={
            "help": "sentence-transformers model (path or hub id) that embeds completions for "
            "diversity_reward='embedding'. None uses the embedded default, all-MiniLM-L6-v2."
        },
    )
    diversity_quality: str = field(
        default="none",
        metadata={
            "help": "Weigh each sample's diversity reward by its quality, DARLING-style (a product, not a sum): 'none' "
            "trains on r_i; 'teacher_likelihood' trains on q_i * r_i, where q_i is the geometric-mean probability that "
            "the CFG-guided teacher gives the sample's tokens, divided by the largest in its group (weights in (0, 1]). "
            "A sample the guided teacher finds unlikely earns less for being different. The baseline is "
            "then RLOO's. Needs distill_coef > 0 (it reads the guided predictions distillation computes).",
            "choices": list(DIVERSITY_QUALITIES),
        },
    )
    unconditional_prompt: str = field(
        default="",
        metadata={
            "help": "The null condition of the teacher's unconditional branch, rendered like the prompts (as the "
            "user message of the chat template for conversational data)."
        },
    )
    teacher_model: str | None = field(
        default=None,
        metadata={
            "help": "Checkpoint (path or hub id) of the CFG teacher; it must share the student's vocabulary. None "
            "uses the initial policy (with LoRA: the base model with the adapter disabled)."
        },
    )

    diversity_target: str | None = field(
        default=None,
        metadata={
            "help": "Hold a level of diversity instead of a fixed diversity_coef: a number (the target batch mean of "
            "the diversity reward r_i, within the measure's range), 'initial' (the starting policy's own on-policy "
            "diversity, measured over the first diversity_target_warmup_steps batches) or 'initial*<factor>' (e.g. "
            "'initial*0.9'). A controller then moves the coefficient once per generation batch (not per optimizer "
            "step, under steps_per_generation or num_iterations > 1), starting from "
            "diversity_coef (which must be > 0), multiplicatively by a factor of at most 1 + diversity_target_rate/5 a batch, within [diversity_coef/100, "
            "diversity_coef*100]; logged as diversity/coef and diversity/target. None: diversity_coef is fixed."
        },
    )
    diversity_target_warmup_steps: int = field(
        default=10,
        metadata={
            "help": "With diversity_target='initial': the number of generation batches (not optimizer steps) whose "
            "mean diversity defines the target; the coefficient stays at diversity_coef meanwhile."
        },
    )

    diversity_target_rate: float = field(
        default=0.1,
        metadata={
            "help": "With a diversity_target: the controller's gain. The coefficient moves by a factor 1 + rate * e "
            "per generation batch, e the relative error to the target clipped to +-0.2, so by a factor of at most "
            "1 + rate/5 a batch (1.02 at the default 0.1, Ziegler et al.'s K). Must lie in (0, 5)."
        },
    )

    max_nonfinite_steps: int = field(
        default=3,
        metadata={
            "help": "An optimizer step with NaN/inf gradients is skipped (weights untouched); this many in a row "
            "stop the training with an error instead of saving a corrupted model."
        },
    )

    def __post_init__(self):
        # Checked before GRPO's own checks, so that the most specific message is the one users see.
        if self.distill_divergence not in DIVERGENCES:
            raise ValueError(
                f"Unknown distill_divergence {self.distill_divergence!r}; choose one of {', '.join(DIVERGENCES)}."
            )
        if not 0.0 < self.distill_jsd_beta < 1.0:
            raise ValueError(f"distill_jsd_beta must lie strictly between 0 and 1, got {self.distill_jsd_beta}.")
        for name in ("distill_coef", "diversity_coef"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value}. Use 0 to turn the term off.")
        check_group_reward_name(self.diversity_reward)
        if self.diversity_quality not in DIVERSITY_QUALITIES:
            raise ValueError(
                f"Unknown diversity_quality {self.diversity_quality!r}; choose one of {', '.join(DIVERSITY_QUALITIES)}."
            )
        if self.diversity_quality == "teacher_likelihood" and self.distill_coef == 0:
            raise ValueError(
                "diversity_quality='teacher_likelihood' weighs the diversity reward by the CFG teacher's likelihood, "
                "which is computed for distillation, and distill_coef=0. Set distill_coef > 0, or "
                "diversity_quality='none'."
            )
        self._check_diversity_target()
        if self.diversity_embedder is not None and self.diversity_reward != "embedding":
            warnings.warn(
                f"diversity_embedder={self.diversity_embedder!r} is unused: diversity_reward="
                f"{self.diversity_reward!r} needs no embedder.",
                stacklevel=3,
            )
        if self.max_nonfinite_steps < 1:
            raise ValueError(f"max_nonfinite_steps must be at least 1, got {self.max_nonfinite_steps}.")
        if not math.isfinite(self.guidance_scale) or self.guidance_scale <= 0:
            raise ValueError(
                f"guidance_scale must be a finite number > 0, got {self.guidance_scale}. 1.0 means no guidance; "
                "the paper's teacher uses 3.0."
            )
        if self.guidance is not None:
            if self.guidance_scale != self.__dataclass_fields__["guidance_scale"].default:
                raise ValueError(
                    f"Set guidance or guidance_scale, not both (guidance={self.guidance!r}, guidance_scale="
                    f"{self.guidance_scale}): a guidance holds its own weights; guidance_scale=G is guidance="
                    f"'{self.guidance_scale - 1:g}*null'."
                )
            parse_guidance(self.guidance)  # refuses an invalid specification in one line, before any model loads
        elif self.guidance_scale < 1:
            warnings.warn(
                f"guidance_scale={self.guidance_scale} < 1 moves the teacher away from the prompt (anti-guidance); "
                "CFG distillation normally uses a scale >= 1.",
                stacklevel=3,
            )
        if self.diversity_coef > 0 and self.num_generations is not None and self.num_generations < 2:
            raise ValueError(
                f"diversity_coef={self.diversity_coef} needs at least 2 samples per prompt to compare, but "
                f"num_generations={self.num_generations}. Set num_generations >= 2 (the paper uses 4 or more)."
            )
        self._warn_about_ignored_fields()
        if (
            self.diversity_coef > 0
            and self.num_generations == 2
            and self.diversity_reward in BUILTIN_GROUP_REWARDS  # every built-in measure is pairwise
        ):
            warnings.warn(
                f"num_generations=2 with the pairwise measure diversity_reward={self.diversity_reward!r}: both samples "
                "of a prompt get the same reward, so there is no leave-one-out baseline; the baseline is the mean "
                "reward of the batch's other groups (0 if the batch holds one group). 4 or more samples give a "
                "per-group baseline.",
                stacklevel=3,
            )
        self._resolve_inherited_defaults()
        super().__post_init__()

    def _check_diversity_target(self) -> None:
        """A target that cannot mean anything is refused here, before any model loads."""
        from trl_diversity.trainer.diversity_controller import (
            DEFAULT_MAX_ERROR,
            check_diversity_target,
            measure_range,
            parse_diversity_target,
        )

        target = parse_diversity_target(self.diversity_target)
        if target is None:
            return
        check_diversity_target(
            target, self.diversity_coef, measure_range(self.diversity_reward), measure_name=self.diversity_reward
        )
        if self.diversity_target_warmup_steps < 1:
            raise ValueError(
                f"diversity_target_warmup_steps must be at least 1, got {self.diversity_target_warmup_steps}."
            )
        rate = self.diversity_target_rate
        if not (math.isfinite(rate) and 0 < rate < 1 / DEFAULT_MAX_ERROR):
            raise ValueError(
                f"diversity_target_rate must lie in (0, {1 / DEFAULT_MAX_ERROR:g}), got {rate} (a step may not move "
                "the coefficient by a factor of 0 or less). The default 0.1 moves it by at most 2% a batch."
            )

    def _warn_about_ignored_fields(self) -> None:
        """A field the other settings make irrelevant is accepted (a recipe may carry it), with one warning."""
        ignored = []
        if self.distill_coef == 0:
            ignored += [
                name
                for name in ("guidance_scale", "guidance", "teacher_model", "unconditional_prompt")
                if getattr(self, name) != self.__dataclass_fields__[name].default
            ]
            reason = "distill_coef=0 turns CFG distillation off"
        if (
            self.distill_divergence != "jsd"
            and self.distill_jsd_beta != self.__dataclass_fields__["distill_jsd_beta"].default
        ):
            warnings.warn(
                f"distill_jsd_beta={self.distill_jsd_beta} is ignored: it weighs the JSD mixture, and "
                f"distill_divergence={self.distill_divergence!r}. Set distill_divergence='jsd' to use it.",
                stacklevel=4,
            )
        if self.diversity_target is None:
            untargeted = [
                name
                for name in ("diversity_target_warmup_steps", "diversity_target_rate")
                if getattr(self, name) != self.__dataclass_fields__[name].default
            ]
            if untargeted:
                warnings.warn(
                    f"{', '.join(f'{name}={getattr(self, name)!r}' for name in untargeted)} ignored: they tune the "
                    "controller of a diversity_target, and diversity_target=None (a fixed diversity_coef). Set "
                    "diversity_target to use them, or drop them.",
                    stacklevel=4,
                )
        if ignored:
            warnings.warn(
                f"{', '.join(f'{name}={getattr(self, name)!r}' for name in ignored)} ignored: {reason}. "
                "Set distill_coef > 0 to use them, or drop them.",
                stacklevel=4,
            )

    def _resolve_inherited_defaults(self) -> None:
        # GRPO's `bf16` default (None, meaning "bf16 unless fp16") fails on a machine without a bf16 GPU ("Your setup
        # doesn't support bf16/gpu"), so a script written for a GPU would not run on a laptop. Left unset there, it
        # means float32 instead; an explicit bf16=True still fails as in GRPO, and GPUs keep GRPO's choice.
        if self.bf16 is None and not self.fp16 and not self.use_cpu and not _bf16_accelerator_available():
            self.bf16 = False
        # Pinned memory only helps copies to an accelerator; without one, torch warns on every dataloader. (With
        # use_cpu=True, TrainingArguments turns it off itself.)
        if self.dataloader_pin_memory and not _any_accelerator_available():
            self.dataloader_pin_memory = False
        # transformers renamed `gradient_checkpointing*` to `activation_checkpointing*` and warns (FutureWarning) on
        # every config whose old name carries a value; GRPO's default does, so every run warned about a name the user
        # never typed. Moving the value to the new name first keeps its meaning and silences that warning.
        for old, new in (
            ("gradient_checkpointing", "activation_checkpointing"),
            ("gradient_checkpointing_kwargs", "activation_checkpointing_kwargs"),
        ):
            if getattr(self, new, False) is None and getattr(self, old) is not None:
                setattr(self, new, getattr(self, old))

    @classmethod
    def default_job(cls, output_dir: str = "outputs/default", **overrides):
        """The settings of `trl-diversity train`'s default job (sized for a CPU: learning rate 2e-4, 4 samples of
        48 tokens, 24 steps, no gradient checkpointing), with `overrides` on top. The class's own defaults are
        GRPO's (learning rate 1e-6, 8 samples of up to 512 tokens), meant for long GPU runs."""
        return cls(**{**DEFAULT_JOB_TRAINING, "output_dir": output_dir, **overrides})


# The method's fields, grouped as TRL groups its own in its configs' `Parameters:` docstrings.
FIELD_GROUPS = {
    "Parameters that control CFG distillation": (
        "guidance_scale",
        "guidance",
        "distill_coef",
        "distill_divergence",
        "distill_jsd_beta",
        "unconditional_prompt",
        "teacher_model",
    ),
    "Parameters that control the diversity reward": (
        "diversity_coef",
        "diversity_reward",
        "diversity_embedder",
        "diversity_quality",
    ),
    "Parameters that control the diversity target": (
        "diversity_target",
        "diversity_target_warmup_steps",
        "diversity_target_rate",
    ),
    "Parameters that control safety": ("max_nonfinite_steps",),
}


def parameters_docstring(groups: dict[str, tuple[str, ...]] = FIELD_GROUPS) -> str:
    """The `Parameters:` section of the configs' docstrings, rendered from each field's type, default and help (so the
    docstring, `--help` and the recipe keys never disagree)."""
    import textwrap

    declared = {f.name: f for f in fields(DiversityCFGFields)}
    lines = ["    Parameters:"]
    for title, names in groups.items():
        lines += [f"        > {title}", ""]
        for name in names:
            spec = declared[name]
            kind = spec.type if isinstance(spec.type, str) else spec.type.__name__
            optional = ", *optional*" if "None" in kind else ""
            lines.append(
                f"        {name} (`{kind.replace(' | None', '')}`{optional}, defaults to `{spec.default!r}`):"
            )
            lines += textwrap.wrap(spec.metadata["help"], 110, initial_indent=" " * 12, subsequent_indent=" " * 12)
        lines.append("")
    return "\n".join(lines)


@dataclass
class DiversityCFGConfig(DiversityCFGFields, GRPOConfig):
    """Configuration of [`DiversityCFGTrainer`]: [`~trl.GRPOConfig`] plus the method's fields below. Every GRPO field
    keeps its meaning and its default (GRPO's, meant for long GPU runs; `DiversityCFGConfig.default_job()` gives the
    CPU-sized default job). The paper's gamma is `guidance_scale` and its beta `diversity_coef`; TRL's own `beta` is
    the KL-to-reference coefficient and is unrelated.

    """


@dataclass
class DiversityCFGRLOOConfig(DiversityCFGFields, RLOOConfig):
    """Configuration of [`DiversityCFGRLOOTrainer`]: [`~trl.RLOOConfig`] plus the method's fields below. Every RLOO
    field keeps its meaning and its default (`beta=0.05`, the KL penalty in the reward; `num_generations=2`).

    """


DiversityCFGConfig.__doc__ += parameters_docstring()
DiversityCFGRLOOConfig.__doc__ += parameters_docstring()


def method_field_names() -> list[str]:
    """The method's own fields, in declaration order (the same in both configs)."""
    return [f.name for f in fields(DiversityCFGFields)]


def _any_accelerator_available() -> bool:
    import torch

    accelerator = getattr(torch, "accelerator", None)  # torch >= 2.6 knows every backend (CUDA, XPU, MPS, ...)
    return accelerator.is_available() if accelerator is not None else torch.cuda.is_available()


def _bf16_accelerator_available() -> bool:
    """The condition under which TrainingArguments accepts bf16 without use_cpu."""
    from transformers.utils import is_torch_bf16_gpu_available, is_torch_xla_available

    return is_torch_bf16_gpu_available() or is_torch_xla_available()
