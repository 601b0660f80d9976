"""A group reward as an ordinary reward function, for plain `trl.GRPOTrainer` (or any trainer's `reward_funcs`).

GRPO calls its reward functions on every process together, each with its own slice of the generation batch. The
wrapper gathers the slices, scores each whole group once (see `score_groups`) and returns this process's rewards, so
a reward that compares a prompt's completions is right on any number of processes. Its cost is one gather of the
texts and columns per call, and one gather of the scores.

    from trl import GRPOTrainer
    from trl_diversity.rewards import as_reward_function

    trainer = GRPOTrainer(..., reward_funcs=[as_reward_function(my_group_reward, num_generations=8)])
"""

from __future__ import annotations

from collections.abc import Callable

from trl_diversity.rewards.group import LOCAL_KWARGS, Processes, reward_name, score_groups


class GroupRewardFunction:
    """Callable like a TRL reward function; scores whole groups of `num_generations` completions with `reward`.

    `num_generations` must be the trainer's: GRPO does not tell reward functions the group size. Each block of that
    many consecutive completions is checked to share one prompt, so a mismatch is an error rather than silently wrong
    groups. Evaluation must use the same group size (GRPO's default, `num_generations_eval=None`). The reward may
    return `None` for a completion it does not apply to, as TRL reward functions may.
    """

    def __init__(self, reward: Callable, num_generations: int, name: str | None = None):
        if not callable(reward):
            raise TypeError(f"A group reward must be callable, got {type(reward).__name__}.")
        if num_generations < 1:
            raise ValueError(f"num_generations must be at least 1, got {num_generations}.")
        self.reward = reward
        self.num_generations = num_generations
        self.__name__ = name or reward_name(reward)  # the name GRPO logs it under (rewards/<name>/mean)

    def __call__(self, prompts, completions, completion_ids=None, **kwargs) -> list[float | None]:
        self._check_trainer_group_size(kwargs.get("log_metric"))
        processes = Processes.current()
        columns = {key: value for key, value in kwargs.items() if key not in LOCAL_KWARGS}
        if completion_ids is not None:
            columns["completion_ids"] = completion_ids
        scores = score_groups(
            self.reward,
            prompts,
            completions,
            self.num_generations,
            columns,
            extra={key: kwargs[key] for key in ("trainer_state", "log_metric") if key in kwargs},
            name=self.__name__,
            allow_none=True,
            check_groups=True,
            processes=processes,
        )
        start = processes.index * len(prompts)
        return scores[start : start + len(prompts)]

    def _check_trainer_group_size(self, log_metric) -> None:
        """Refuse a group size other than the trainer's.

        The block check in `score_groups` cannot see a `num_generations` that divides the trainer's: a group of 4
        splits into two blocks of 2 that each share one prompt. TRL (1.16) passes its reward functions `log_metric`,
        a method of the trainer, so the trainer's own group size can be read from it."""
        trainer = getattr(log_metric, "__self__", None)
        if trainer is None or not hasattr(trainer, "num_generations"):
            return  # called outside a TRL trainer: the block check is all there is
        model = getattr(trainer, "model", None)
        training = model is None or model.training
        expected = trainer.num_generations if training else (trainer.num_generations_eval or trainer.num_generations)
        if expected != self.num_generations:
            setting = "num_generations" if training else "num_generations_eval"
            raise ValueError(
                f"{self.__name__} was wrapped with as_reward_function(..., num_generations={self.num_generations}), "
                f"but the trainer samples {setting}={expected} completions per prompt: its groups would be split. "
                f"Wrap it with num_generations={expected}."
            )

    def __repr__(self) -> str:
        return f"GroupRewardFunction({self.__name__}, num_generations={self.num_generations})"


def as_reward_function(reward: Callable, num_generations: int, name: str | None = None) -> GroupRewardFunction:
    """Turn a group reward into a reward function for `trl.GRPOTrainer(reward_funcs=...)`."""
    return GroupRewardFunction(reward, num_generations, name)
