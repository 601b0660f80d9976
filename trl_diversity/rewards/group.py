"""Group rewards, and scoring them whole whatever the process layout.

A *group reward* scores the `k` completions of one prompt together (rank them, count distinct answers, reward the
odd one out). It is a callable, called with keyword arguments. Unbatched (the default) it scores one group:

    reward(prompt=..., completions=[k completions], **kwargs) -> k floats

`completions` are exactly what GRPO hands its reward functions (strings, or message lists for conversational data).
`kwargs` holds `completion_ids` and every dataset column as lists of `k` values (one per completion, as GRPO repeats
them), plus `trainer_state` and, inside a TRL trainer, `log_metric` (TRL averages what every process logs); accept
`**kwargs` to ignore what you do not use. `log_extra` is not passed: it takes one value per completion of this
process's slice, while a group reward scores a share of the gathered batch. An `async def` reward is awaited, its
groups concurrently. Marked batched (`@batched_group_reward`,
or a `batched = True` attribute), it scores several groups per call, everything one list level deeper:

    reward(prompts=[G prompts], completions=[G lists of k], **kwargs) -> G lists of k floats

Why a mechanism is needed: in GRPO a prompt's `k` completions are consecutive in the *global* generation batch, but
each process holds only a slice of it, so a group can span processes, and a reward function sees only its process's
part. `score_groups` gathers the batch (texts and columns) from every process, lets each process score a disjoint
share of whole groups, so that each group is scored exactly once in total, gathers the scores back, and returns all
of them on every process (callers keep their own slice). A failure is reported on every process at once (no process
is left waiting in a collective), as a `GroupRewardError` naming the reward and the prompt.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from trl_diversity.rewards.text import completion_text

# Keyword arguments GRPO passes to reward functions that are per-process objects, not per-completion data: they are
# not gathered (`trainer_state` is the same on every process and is passed on as is).
LOCAL_KWARGS = ("trainer_state", "log_extra", "log_metric", "environments")


class GroupRewardError(ValueError):
    """A group reward raised, or returned something other than one finite number per completion."""


def batched_group_reward(reward: Callable) -> Callable:
    """Mark a group reward as batched: it takes lists of groups and returns one list of `k` rewards per group."""
    reward.batched = True
    return reward


def reward_name(reward: Callable) -> str:
    """The name a reward is reported under: its `__name__`, or its class name for a callable object."""
    while isinstance(reward, functools.partial):
        reward = reward.func
    return getattr(reward, "__name__", type(reward).__name__)


@dataclass(frozen=True)
class Processes:
    """This process's rank, the number of processes, and an all-gather of Python lists (concatenated in rank order)."""

    index: int
    count: int
    gather: Callable[[list], list]

    @classmethod
    def current(cls) -> Processes:
        from accelerate import PartialState
        from accelerate.utils import gather_object

        state = PartialState()
        return cls(state.process_index, state.num_processes, gather_object)


def group_shares(num_groups: int, num_processes: int) -> list[range]:
    """Contiguous, disjoint, near-equal ranges of group indices, one per process, covering every group once."""
    return [
        range(p * num_groups // num_processes, (p + 1) * num_groups // num_processes) for p in range(num_processes)
    ]


def score_groups(
    reward: Callable,
    prompts: Sequence,
    completions: Sequence,
    num_generations: int,
    columns: dict[str, Sequence] | None = None,
    *,
    extra: dict[str, Any] | None = None,
    name: str | None = None,
    allow_none: bool = False,
    check_groups: bool = False,
    processes: Processes | None = None,
) -> list[float | None]:
    """Score every group of the global batch once; return the rewards of the whole global batch, in batch order.

    Every process must call this together, with its own slice of the batch (`prompts`, `completions` and each
    per-completion column have one entry per local completion). `extra` keyword arguments are passed to the reward
    as they are (not gathered). `allow_none` lets the reward return `None` ("not applicable", GRPO's convention for
    quality rewards); `check_groups` verifies that each block of `num_generations` rows shares one prompt (for
    callers that take `num_generations` on trust from the user).
    """
    processes = processes or Processes.current()
    name = name or reward_name(reward)
    columns = {key: list(values) for key, values in (columns or {}).items()}
    for key, values in columns.items():
        if len(values) != len(prompts):
            raise ValueError(f"Column {key!r} has {len(values)} values for {len(prompts)} completions.")

    # One gather of the texts and columns: every process then holds the whole global batch.
    local = {"prompts": list(prompts), "completions": list(completions), "columns": columns}
    parts = processes.gather([local])
    prompts = [p for part in parts for p in part["prompts"]]
    completions = [c for part in parts for c in part["completions"]]
    columns = {key: [v for part in parts for v in part["columns"][key]] for key in columns}
    # The checks below see the same gathered batch on every process, so all processes raise together.
    if num_generations < 1 or len(prompts) % num_generations != 0:
        raise GroupRewardError(
            f"Group reward {name!r}: {len(prompts)} completions cannot be split into groups of "
            f"num_generations={num_generations}."
        )
    num_groups = len(prompts) // num_generations
    if check_groups:
        _check_one_prompt_per_group(prompts, num_generations, name)

    batch = _Batch(reward, name, prompts, completions, columns, num_generations, extra or {}, allow_none)
    mine = group_shares(num_groups, processes.count)[processes.index]
    local_error = None
    try:
        payload = ("ok", batch.score(mine))
    except Exception as error:  # reported on every process below, so that none is left waiting in the gather
        local_error = error
        message = str(error) if isinstance(error, GroupRewardError) else batch.describe_failure(error, mine)
        payload = ("error", message)
    results = processes.gather([payload])
    errors = [message for status, message in results if status == "error"]
    if errors:
        raise GroupRewardError(errors[0]) from local_error
    return [value for _, values in results for value in values]


@dataclass
class _Batch:
    """The gathered global batch, and the scoring of a range of its groups with one reward."""

    reward: Callable
    name: str
    prompts: list
    completions: list
    columns: dict[str, list]
    k: int
    extra: dict[str, Any]
    allow_none: bool

    def rows(self, group: int) -> slice:
        return slice(group * self.k, (group + 1) * self.k)

    def score(self, groups: range) -> list[float | None]:
        if len(groups) == 0:
            return []
        if getattr(self.reward, "batched", False):
            outputs = self.reward(
                prompts=[self.prompts[g * self.k] for g in groups],
                completions=[self.completions[self.rows(g)] for g in groups],
                **{key: [values[self.rows(g)] for g in groups] for key, values in self.columns.items()},
                **self.extra,
            )
            if inspect.isawaitable(outputs):  # an async batched reward: awaited before its outputs are checked
                outputs = _await_all([outputs])[0]
                if isinstance(outputs, Exception):
                    raise GroupRewardError(self.describe_failure(outputs, groups)) from outputs
            if not _is_sequence(outputs) or len(outputs) != len(groups):
                raise GroupRewardError(
                    f"Batched group reward {self.name!r} returned {_describe(outputs)} for {len(groups)} prompts "
                    f"(prompts {groups.start} to {groups.stop - 1} of the batch); it must return one list of "
                    f"{self.k} rewards per prompt."
                )
        else:
            outputs = []
            for group in groups:
                try:
                    outputs.append(
                        self.reward(
                            prompt=self.prompts[group * self.k],
                            completions=self.completions[self.rows(group)],
                            **{key: values[self.rows(group)] for key, values in self.columns.items()},
                            **self.extra,
                        )
                    )
                except Exception as error:
                    raise GroupRewardError(self.describe_failure(error, range(group, group + 1))) from error
            if any(inspect.isawaitable(output) for output in outputs):  # an async reward: its groups run concurrently
                outputs = _await_all(outputs)
                for group, output in zip(groups, outputs):
                    if isinstance(output, Exception):
                        raise GroupRewardError(self.describe_failure(output, range(group, group + 1))) from output
        return [value for group, values in zip(groups, outputs) for value in self.check(values, group)]

    def check(self, values, group: int) -> list[float | None]:
        where = f"prompt {group} of the batch ({self.excerpt(group)})"
        if not _is_sequence(values) or len(values) != self.k:
            raise GroupRewardError(
                f"Group reward {self.name!r} returned {_describe(values)} for the {self.k} completions of {where}; "
                f"it must return one reward per completion ({self.k} numbers)."
            )
        checked = []
        for index, value in enumerate(values):
            if value is None and self.allow_none:
                checked.append(None)
                continue
            try:
                number = float(value)
            except (TypeError, ValueError):
                number = None
            if number is None or not math.isfinite(number):
                raise GroupRewardError(
                    f"Group reward {self.name!r} returned {value!r} for completion {index} of {where}; every reward "
                    "must be a finite number" + (" or None (not applicable)." if self.allow_none else ".")
                )
            checked.append(number)
        return checked

    def describe_failure(self, error: Exception, groups: range) -> str:
        where = (
            f"prompt {groups.start} of the batch ({self.excerpt(groups.start)})"
            if len(groups) == 1
            else f"prompts {groups.start} to {groups.stop - 1} of the batch"
        )
        return f"Group reward {self.name!r} raised {type(error).__name__} on {where}: {error}"

    def excerpt(self, group: int, width: int = 60) -> str:
        text = " ".join(completion_text(self.prompts[group * self.k]).split())
        return repr(text if len(text) <= width else text[: width - 3] + "...")


def _await_all(awaitables: list) -> list:
    """Await every group's coroutine concurrently (an async group reward, e.g. a judge behind an API); a failure comes
    back as its exception, in its place. Runs its own event loop, in a worker thread when this thread already runs
    one (a notebook)."""

    async def gather():
        return await asyncio.gather(*awaitables, return_exceptions=True)

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(gather())
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, gather()).result()


def _is_sequence(value) -> bool:
    return hasattr(value, "__len__") and not isinstance(value, (str, bytes, dict))


def _describe(value) -> str:
    if _is_sequence(value):
        return f"{len(value)} values"
    return f"a {type(value).__name__}"


def _check_one_prompt_per_group(prompts: list, num_generations: int, name: str) -> None:
    for start in range(0, len(prompts), num_generations):
        block = prompts[start : start + num_generations]
        if any(prompt != block[0] for prompt in block[1:]):
            raise GroupRewardError(
                f"Group reward {name!r}: rows {start} to {start + num_generations - 1} of the batch hold different "
                f"prompts, so they are not one group of num_generations={num_generations}. Pass the trainer's "
                "num_generations (and evaluate with num_generations_eval equal to it)."
            )
