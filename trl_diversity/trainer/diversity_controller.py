"""A diversity *target* held by a controller, instead of a hand-searched `diversity_coef` (issue 16).

The paper's `beta` (`diversity_coef`) weighs the diversity advantage `coef * (r_i - b_i)`. What a user actually wants
is a level of diversity; which `beta` gives it depends on the model, the data, the measure and the guidance scale, and
drifts during training. Like PPO's adaptive KL controller (Ziegler et al. 2019: `beta <- beta * (1 + K * clip(KL /
KL_target - 1, -0.2, 0.2))`, `K = 0.1`), `DiversityCoefController` moves the coefficient multiplicatively so that the
measured diversity (the batch mean of `r_i`) settles at the target.

The config field `diversity_target` (parsed by `parse_diversity_target`) is one of:

- `None`: the coefficient is fixed at `diversity_coef` (no controller);
- a number: the target for the batch mean of the diversity reward `r_i` (for the pairwise built-ins, the mean
  pairwise dissimilarity);
- `"initial"`: the starting policy's own diversity, measured as the mean over the first `warmup_steps` measurements;
  `"initial*0.9"` scales it (keep 90% of the starting diversity while CFG distillation pulls it down).

`diversity_coef` is then the starting value of the coefficient.

Resuming: `DiversityControllerCallback` saves the controller in `trainer_state.json` (`stateful_callbacks`) at each
checkpoint and restores it on resume, with or without `restore_callback_states_from_checkpoint` (see its docstring).
"""

from __future__ import annotations

import logging
import math
import numbers
import re
from dataclasses import dataclass
from typing import NoReturn

from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

logger = logging.getLogger(__name__)

# An "initial" target below this is a policy with no measurable diversity (or a reward that returns 0): warned of.
NEAR_ZERO_TARGET = 1e-6

FIELD = "diversity_target"

# The range of each built-in measure's per-sample reward r_i, hence of its batch mean (measures.py): 1 - cos of two
# embeddings lies in [0, 2]; 1 - Jaccard overlap and the share of non-equivalent samples lie in [0, 1].
MEASURE_RANGES: dict[str, tuple[float, float]] = {
    "embedding": (0.0, 2.0),
    "lexical": (0.0, 1.0),
    "partition": (0.0, 1.0),
}

# The controller's constants (the rule and the reasons are in `DiversityCoefController`'s docstring).
DEFAULT_RATE = 0.1
DEFAULT_EMA = 1.0
DEFAULT_MAX_ERROR = 0.2
DEFAULT_WARMUP_STEPS = 10
DEFAULT_BOUND_FACTOR = 100.0

_ACCEPTED = (
    "use a number (the target batch mean of the diversity reward, e.g. 0.5), 'initial' (the starting policy's own "
    "diversity), 'initial*<factor>' with a finite factor > 0 (e.g. 'initial*0.9'), or None (a fixed diversity_coef)"
)
_RELATIVE = re.compile(r"^initial(?:\s*\*\s*(?P<factor>.*))?$")


@dataclass(frozen=True)
class DiversityTarget:
    """A parsed `diversity_target`: exactly one of `level` (an absolute target for the batch mean diversity reward)
    and `relative_factor` (a multiple of the initial policy's diversity, measured during a warm-up)."""

    level: float | None = None
    relative_factor: float | None = None

    def __post_init__(self):
        if (self.level is None) == (self.relative_factor is None):
            raise ValueError(
                "DiversityTarget takes exactly one of level (an absolute target) and relative_factor (a multiple of "
                f"the initial policy's diversity), got level={self.level!r}, relative_factor={self.relative_factor!r}."
            )

    @property
    def is_relative(self) -> bool:
        return self.relative_factor is not None

    @property
    def spec(self) -> float | str:
        """The config form of this target: `parse_diversity_target(target.spec) == target`."""
        if self.level is not None:
            return self.level
        return "initial" if self.relative_factor == 1.0 else f"initial*{self.relative_factor!r}"

    def describe(self) -> str:
        if self.level is not None:
            return f"a mean diversity reward of {self.level:g}"
        share = "the" if self.relative_factor == 1.0 else f"{self.relative_factor:g} x the"
        return f"{share} initial policy's diversity (the mean over the warm-up measurements)"


def parse_diversity_target(value) -> DiversityTarget | None:
    """`diversity_target` as given in a config, a recipe or on the command line: None, a number, a numeric string,
    "initial" or "initial*<factor>" (or an already parsed `DiversityTarget`). Anything else raises ValueError."""
    if value is None or isinstance(value, DiversityTarget):
        return value
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        level = float(value)
        if not math.isfinite(level):
            _refuse(value, "it is not finite")
        return DiversityTarget(level=level)
    if isinstance(value, str):
        text = value.strip()
        match = _RELATIVE.match(text)
        if match is not None:
            if match["factor"] is None:
                return DiversityTarget(relative_factor=1.0)
            factor = _as_float(match["factor"])
            if factor is None or not math.isfinite(factor) or factor <= 0:
                _refuse(value, "the factor after 'initial*' must be a finite number > 0")
            return DiversityTarget(relative_factor=factor)
        level = _as_float(text)
        if level is not None:
            if not math.isfinite(level):
                _refuse(value, "it is not finite")
            return DiversityTarget(level=level)
    _refuse(value)


def _as_float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _refuse(value, reason: str | None = None) -> NoReturn:
    because = f" ({reason})" if reason else ""
    raise ValueError(f"{FIELD}={value!r} is not understood{because}: {_ACCEPTED}.")


def measure_range(diversity_reward: str) -> tuple[float, float] | None:
    """The range of a built-in measure's reward (`MEASURE_RANGES`); None for a custom group reward (unknown)."""
    return MEASURE_RANGES.get(diversity_reward)


def check_diversity_target(
    target: DiversityTarget | None,
    diversity_coef: float,
    measure_range: tuple[float, float] | None,
    *,
    measure_name: str | None = None,
) -> None:
    """Refuse a target that cannot mean anything, with a one-line ValueError naming the option and the fix.

    - a level outside `measure_range` (the diversity reward's range; None for a custom reward: not checked), or a
      level of 0 (the controller's error is relative to the target);
    - any target with `diversity_coef == 0`: the controller scales the coefficient, so from 0 it cannot move;
    - a relative factor that is not a finite number > 0.
    """
    if target is None:
        return
    spec = target.spec
    if target.is_relative:
        factor = target.relative_factor
        if not (isinstance(factor, numbers.Real) and math.isfinite(factor) and factor > 0):
            raise ValueError(
                f"{FIELD}: the factor of 'initial*<factor>' must be a finite number > 0, got {factor!r}. Use e.g. "
                "'initial*0.9' to hold 90% of the starting policy's diversity."
            )
    else:
        level = target.level
        if not (isinstance(level, numbers.Real) and math.isfinite(level)):
            raise ValueError(f"{FIELD}={level!r} is not a finite number: {_ACCEPTED}.")
        if level == 0:
            raise ValueError(
                f"{FIELD}=0 cannot be aimed at: the controller's error is relative to the target. Set a target > 0, "
                "or diversity_coef=0 without a target for pure CFG distillation."
            )
        if measure_range is not None:
            low, high = measure_range
            if not low <= level <= high:
                measure = f"diversity_reward={measure_name!r}" if measure_name else "the diversity reward"
                raise ValueError(
                    f"{FIELD}={level!r} lies outside [{low:g}, {high:g}], the range of {measure}'s batch mean: no "
                    f"policy can reach it. Set a target inside that range, or {FIELD}='initial*<factor>' to aim "
                    "relative to the starting policy's own diversity."
                )
    if not (math.isfinite(diversity_coef) and diversity_coef > 0):
        raise ValueError(
            f"{FIELD}={spec!r} with diversity_coef={diversity_coef!r}: the controller scales the coefficient "
            "multiplicatively, so from 0 it has no room to move. Set diversity_coef > 0 as the starting value (e.g. "
            f"the default 15), or drop {FIELD} to keep a fixed diversity_coef."
        )


class DiversityCoefController:
    """Holds the diversity reward's batch mean at a target by moving the diversity coefficient.

    Call `update(measured)` once per scored training batch with the *global* (all-process) mean diversity reward of
    that batch; it returns the coefficient to use from the next batch on. The rule, for measurement `x_t`:

        m_t   = x_1                                    (first measurement)
        m_t   = (1 - ema) * m_{t-1} + ema * x_t        (then)
        e_t   = clip((target - m_t) / |target|, -max_error, +max_error)
        coef <- clip(coef * (1 + rate * e_t), lower, upper)

    Diversity below the target gives `e_t > 0` and raises the coefficient; above it, lowers it. Constants:

    - `max_error = 0.2`, as in Ziegler et al.'s KL controller: the error saturates 20% away from the target, so one
      step moves the coefficient by at most a factor `1 +- rate * max_error`, whatever the measurement (an outlier
      included).
    - `rate = 0.1` (Ziegler et al.'s `K_beta`): at most 2% per step, so a factor e in about 50 steps at saturated
      error, and the x100 bounds in about 230. The policy's diversity answers the coefficient only through learning,
      tens of steps later; a faster controller (e.g. 0.5, 10% per step, a factor 2.6 in 10 steps) keeps moving for
      that long after the diversity has turned, so it overshoots and risks swinging between the bounds.
    - `ema = 1.0`, i.e. no smoothing: `m_t = x_t`, Ziegler et al.'s rule as is. The controller integrates already
      (`log coef` moves by about `rate * sum_t e_t`), and an EMA preserves that sum: it leaves the coefficient's
      long-run path and its noise unchanged, adds lag (`(1 - ema) / ema` steps) to the loop, and spreads an outlier
      over many steps that each stay under the clip, so that its whole effect escapes it. One batch at the embedding
      measure's maximum (2.0, target 0.5) moves the coefficient by 2% in all with `ema = 1`, by about 24% with
      `ema = 0.1`. Per-batch noise moves it by `rate * noise` a step, and the policy, which learns over many
      steps, averages that out. That noise is large on small batches: with 2 prompts of 4 samples a batch (the
      reproduction's full budget) the batch mean's standard deviation was 0.07-0.10 around means of 0.43-0.69, about
      18% of the mean, over the second half of 14 runs (`docs/results/diversity_models.md`). Larger batches, not an
      EMA, are the cure: an EMA only delays the same random walk of `log coef`.
    - `lower, upper = initial_coef / 100, initial_coef * 100` by default: room for two orders of magnitude either
      way, while an unreachable target cannot drive the coefficient to 0 or to infinity.
    - `warmup_steps = 10` (an `"initial"` target only): the target is `factor * mean` of the first 10 measurements,
      during which the coefficient stays at `initial_coef` (the running mean is still updated). Ten batches average
      the sampling noise (~3x less than one batch), while early in training the policy has moved little.

    A "step" of the controller is one generation batch, not one optimizer step: it takes one measurement each time
    the trainer generates (`_generate_and_score_completions`). With `steps_per_generation = s` (GRPO's default is the
    gradient accumulation steps) a batch is trained on for `s` micro-steps, and with `num_iterations = n` reused `n`
    times, so the rate per optimizer step is `rate * (generation batches per optimizer step)`, and the warm-up lasts
    `warmup_steps` generation batches. Count `rate`, `warmup_steps` and the steps-to-target in generation batches.

    With a target of exactly 0 (an `"initial"` target of a policy without any diversity), the error is the limit of
    the formula: `-max_error` above 0, `+max_error` below, 0 at 0.

    A non-finite measurement is skipped (the coefficient and the state stay as they are, with a warning). Everything
    is plain Python float arithmetic: every process computes the same coefficients from the same gathered inputs.
    """

    def __init__(
        self,
        target: DiversityTarget | float | str,
        initial_coef: float,
        *,
        rate: float = DEFAULT_RATE,
        ema: float = DEFAULT_EMA,
        max_error: float = DEFAULT_MAX_ERROR,
        lower: float | None = None,
        upper: float | None = None,
        warmup_steps: int = DEFAULT_WARMUP_STEPS,
    ):
        parsed = parse_diversity_target(target)
        if parsed is None:
            raise ValueError(f"{FIELD}=None means a fixed diversity_coef: it needs no controller.")
        check_diversity_target(parsed, initial_coef, None)
        initial_coef = float(initial_coef)
        lower = initial_coef / DEFAULT_BOUND_FACTOR if lower is None else float(lower)
        upper = initial_coef * DEFAULT_BOUND_FACTOR if upper is None else float(upper)
        checks = [
            (math.isfinite(rate) and rate > 0, f"rate must be a finite number > 0, got {rate!r}"),
            (0 < ema <= 1, f"ema must lie in (0, 1], got {ema!r}"),
            (
                math.isfinite(max_error) and max_error > 0 and rate * max_error < 1,
                f"max_error must be > 0 with rate * max_error < 1 (a step may not reach a factor 0), got "
                f"max_error={max_error!r}, rate={rate!r}",
            ),
            (
                0 < lower <= initial_coef <= upper < math.inf,
                f"the bounds must satisfy 0 < lower <= initial_coef <= upper < inf, got lower={lower!r}, "
                f"initial_coef={initial_coef!r}, upper={upper!r}",
            ),
            (
                isinstance(warmup_steps, int) and not isinstance(warmup_steps, bool) and warmup_steps >= 1,
                f"warmup_steps must be an integer >= 1, got {warmup_steps!r}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"DiversityCoefController: {message}.")
        self.target_spec = parsed
        self.initial_coef = initial_coef
        self.rate = float(rate)
        self.ema = float(ema)
        self.max_error = float(max_error)
        self.lower = lower
        self.upper = upper
        self.warmup_steps = warmup_steps
        # The state (what `state_dict` exports).
        self._coef = initial_coef
        self._running_mean: float | None = None
        self._steps = 0  # measurements used (non-finite ones are skipped)
        self._warmup_samples: list[float] = []  # relative targets only: the first `warmup_steps` measurements
        self._target = self._resolved_target()

    # -- reading

    @property
    def coef(self) -> float:
        """The coefficient to use now."""
        return self._coef

    @property
    def target(self) -> float | None:
        """The target level; None during the warm-up of an `"initial"` target."""
        return self._target

    @property
    def running_mean(self) -> float | None:
        return self._running_mean

    @property
    def steps(self) -> int:
        return self._steps

    @property
    def warming_up(self) -> bool:
        return self._target is None

    @property
    def error(self) -> float | None:
        """The clipped relative error `e_t` of the current running mean; None before a target and a measurement."""
        if self._target is None or self._running_mean is None:
            return None
        target, mean = self._target, self._running_mean
        if target == 0:
            raw = 0.0 if mean == 0 else math.copysign(math.inf, target - mean)
        else:
            raw = (target - mean) / abs(target)
        return min(max(raw, -self.max_error), self.max_error)

    def metrics(self) -> dict[str, float]:
        """What to log each step (NaN where not defined yet)."""
        nan = float("nan")
        return {
            "diversity/coef": self._coef,
            "diversity/target": nan if self._target is None else self._target,
            "diversity/running_mean": nan if self._running_mean is None else self._running_mean,
        }

    # -- the rule

    def update(self, measured_mean_diversity: float) -> float:
        """Take one measurement (the global mean diversity reward of a training batch); return the coefficient to
        use from the next batch on."""
        value = float(measured_mean_diversity)
        if not math.isfinite(value):
            logger.warning(
                f"Diversity controller: the measured mean diversity is {value}; measurement skipped, the coefficient "
                f"stays {self._coef:g}. Check the diversity reward for NaN/inf."
            )
            return self._coef
        self._steps += 1
        if self._running_mean is None:
            self._running_mean = value
        else:
            self._running_mean = (1.0 - self.ema) * self._running_mean + self.ema * value
        if self._target is None:  # warm-up of an "initial" target: collect, hold the coefficient
            self._warmup_samples.append(value)
            self._target = self._resolved_target()
            if self._target is not None:
                logger.info(
                    f"Diversity controller: target set to {self._target:g} "
                    f"({self.target_spec.describe()}, over {self.warmup_steps} measurements)."
                )
                if abs(self._target) < NEAR_ZERO_TARGET:
                    logger.warning(
                        f"Diversity controller: the 'initial' target measured {self._target:g}: the starting policy "
                        "shows no diversity on this reward, so any diversity is above target and the coefficient will "
                        f"fall toward its lower bound {self.lower:g}. Set a numeric diversity_target, or check the "
                        "diversity reward (does it return 0 for every group?)."
                    )
            return self._coef
        self._coef = min(max(self._coef * (1.0 + self.rate * self.error), self.lower), self.upper)
        return self._coef

    def _resolved_target(self) -> float | None:
        if self.target_spec.level is not None:
            return self.target_spec.level
        if len(self._warmup_samples) < self.warmup_steps:
            return None
        samples = self._warmup_samples[: self.warmup_steps]
        return self.target_spec.relative_factor * (math.fsum(samples) / len(samples))

    # -- persistence (JSON-safe: plain floats, ints, lists, strings)

    def settings(self) -> dict:
        """The constructor's arguments: `DiversityCoefController(**c.settings())` is a fresh controller like `c`."""
        return {
            "target": self.target_spec.spec,
            "initial_coef": self.initial_coef,
            "rate": self.rate,
            "ema": self.ema,
            "max_error": self.max_error,
            "lower": self.lower,
            "upper": self.upper,
            "warmup_steps": self.warmup_steps,
        }

    def state_dict(self) -> dict:
        """The dynamic state. `target` is informational: on load it is derived again from the settings (and the
        warm-up samples), so that a run resumed with a changed `diversity_target` aims at the new one."""
        return {
            "coef": self._coef,
            "running_mean": self._running_mean,
            "steps": self._steps,
            "warmup_samples": list(self._warmup_samples),
            "target": self._target,
        }

    def load_state_dict(self, state: dict) -> None:
        """Set the state back exactly (a coefficient outside the current bounds is clipped into them)."""
        try:
            coef = state["coef"]
            running_mean = state["running_mean"]
            steps = state["steps"]
            samples = state["warmup_samples"]
        except (KeyError, TypeError) as error:
            raise ValueError(
                f"Cannot restore the diversity controller: malformed state {state!r} ({error!r})."
            ) from None
        valid = (
            _finite(coef)
            and coef > 0
            and (running_mean is None or _finite(running_mean))
            and isinstance(steps, int)
            and steps >= 0
            and isinstance(samples, list)
            and all(_finite(sample) for sample in samples)
        )
        if not valid:
            raise ValueError(f"Cannot restore the diversity controller: malformed state {state!r}.")
        self._coef = min(max(float(coef), self.lower), self.upper)
        self._running_mean = None if running_mean is None else float(running_mean)
        self._steps = steps
        self._warmup_samples = [float(sample) for sample in samples]
        self._target = self._resolved_target()


def _finite(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


class DiversityControllerCallback(TrainerCallback, ExportableState):
    """Saves the controller into each checkpoint's `trainer_state.json` and restores it on resume.

    How transformers handles an `ExportableState` callback (trainer.py, `_save_checkpoint` and
    `_load_callback_state`), and what this class does about it:

    - Saving: at each checkpoint the Trainer stores `state()` under `stateful_callbacks[<class name>]`. `state()` is
      `{"args": {"settings": <constructor settings>}, "attributes": {"controller_state": <dynamic state>}}`, all
      plain JSON (floats round-trip exactly through `json`).
    - Restoring by the Trainer happens only with `restore_callback_states_from_checkpoint=True` (default False). It
      matches the stored entry to a callback by class name, builds a *new* instance with `type(cb)(**args)` (here
      `settings=...`: the checkpoint's settings win), sets each attribute with `setattr` (`controller_state` is a
      property that loads the state), removes the old instance and appends the new one. The controller is then a new
      object: read it through `current_controller(trainer)` at each step, never keep a reference across `train()`.
    - Without that flag the Trainer restores nothing; this callback restores itself in `on_train_begin`, which runs
      after the checkpoint's `TrainerState` is loaded: it loads the stored dynamic state into its own controller
      (current settings kept; a difference is logged). Idempotent after the Trainer's own restore, and a no-op on a
      fresh run (the entry then holds the current state).
    - A checkpoint saved without this callback (a run with a fixed coefficient) has no entry; the Trainer's next
      `_save_checkpoint` would then fail with a KeyError on it, so `on_train_begin` adds the entry (and warns that the
      controller starts afresh from `diversity_coef`).
    """

    def __init__(self, controller: DiversityCoefController | None = None, *, settings: dict | None = None):
        if (controller is None) == (settings is None):
            raise TypeError("DiversityControllerCallback takes a controller, or the settings to build one.")
        self.controller = controller if controller is not None else DiversityCoefController(**settings)

    @property
    def controller_state(self) -> dict:
        return self.controller.state_dict()

    @controller_state.setter
    def controller_state(self, value: dict) -> None:
        self.controller.load_state_dict(value)

    def state(self) -> dict:
        return {
            "args": {"settings": self.controller.settings()},
            "attributes": {"controller_state": self.controller.state_dict()},
        }

    def on_train_begin(self, args, state, control, **kwargs):
        self._restore_or_register(state)
        warning = warmup_outlasts_run(self.controller, args, state)
        if warning is not None:
            logger.warning(warning)

    def _restore_or_register(self, state) -> None:
        name = type(self).__name__
        stored = state.stateful_callbacks.get(name)
        if stored is None:
            if state.global_step > 0:
                logger.warning(
                    f"The checkpoint holds no diversity controller state (saved without {FIELD}?): the controller "
                    f"starts afresh at diversity_coef={self.controller.coef:g}"
                    + (
                        ", and its 'initial' target is measured on the resumed policy, not the starting one."
                        if self.controller.target_spec.is_relative
                        else "."
                    )
                )
            state.stateful_callbacks[name] = self.state()
            return
        if isinstance(stored, list):  # several callbacks of this class: the Trainer pairs the first with the first
            stored = stored[0]
        self.restore(stored)

    def restore(self, stored: dict) -> None:
        """Load a stored `state()` into this callback's controller, keeping the current settings."""
        saved = (stored.get("args") or {}).get("settings") or {}
        current = self.controller.settings()
        changed = [
            f"{key}: {saved.get(key)!r} -> {value!r}" for key, value in current.items() if saved.get(key) != value
        ]
        if saved and changed:
            logger.warning(
                "Diversity controller settings differ from the checkpoint's ("
                + "; ".join(changed)
                + "): its coefficient and measurements continue under the current settings."
            )
        state = (stored.get("attributes") or {}).get("controller_state")
        if state is None:
            raise ValueError(
                f"Cannot restore the diversity controller: the checkpoint's entry {stored!r} has no state."
            )
        self.controller.load_state_dict(state)


def warmup_outlasts_run(controller: DiversityCoefController, args, state) -> str | None:
    """The warning for a run too short for the warm-up of its `"initial"` target (None where it fits): the target is
    never set and the coefficient stays at `diversity_coef`. The controller measures once per generation batch, every
    `steps_per_generation * num_iterations` micro-batches, of which an optimizer step takes
    `gradient_accumulation_steps`."""
    max_steps = getattr(args, "max_steps", None)
    if not controller.warming_up or max_steps is None:
        return None
    left = controller.warmup_steps - len(controller._warmup_samples)
    total = max_steps if max_steps > 0 else state.max_steps
    accumulation = getattr(args, "gradient_accumulation_steps", 1)
    generate_every = (getattr(args, "steps_per_generation", None) or accumulation) * (
        getattr(args, "num_iterations", None) or 1
    )
    batches = math.ceil(max(total - state.global_step, 0) * accumulation / generate_every)
    if batches >= left:
        return None
    return (
        f"Diversity controller: {FIELD}={controller.target_spec.spec!r} is measured over a warm-up of "
        f"{controller.warmup_steps} generation batches (diversity_target_warmup_steps), but this run has "
        f"{batches} more (max_steps={total}), so the warm-up never ends: no target is set and the coefficient stays at "
        f"{controller.coef:g}. Train longer, lower diversity_target_warmup_steps, or set a numeric {FIELD}."
    )


def current_controller(trainer_or_callbacks) -> DiversityCoefController | None:
    """The controller of the `DiversityControllerCallback` a trainer (or a `CallbackHandler`, or a list of callbacks)
    holds now; None without one. The Trainer may swap that callback on resume: look it up, do not cache it."""
    handler = getattr(trainer_or_callbacks, "callback_handler", trainer_or_callbacks)
    callbacks = getattr(handler, "callbacks", handler)
    for callback in callbacks:
        if isinstance(callback, DiversityControllerCallback):
            return callback.controller
    return None
