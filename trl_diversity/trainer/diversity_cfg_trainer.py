"""The method on TRL's two online RL trainers: `DiversityCFGTrainer` (GRPO) and `DiversityCFGRLOOTrainer` (RLOO).

The method itself is `DiversityCFGMixin` (`method.py`). This file holds only what differs between the algorithms:

| | GRPO | RLOO |
|---|---|---|
| constructor | GRPO's, `tools`, `rollout_func` and `environment_factory` included; `reward_funcs` optional | RLOO's (it has no tools, rollout function or environments); `reward_funcs` optional too |
| no quality reward | an empty `[N, 0]` reward matrix: GRPO's advantages are 0 | a zero column `[N, 1]` of weight 0: the row stays scorable, so RLOO's KL penalty (`beta`, in the reward) still enters the advantages |
| distillation reduction | GRPO's reduction of its policy term for the chosen `loss_type`, divided by the accumulation steps as GRPO does | RLOO's: a sum over each completion's tokens, then a mean over the completions; transformers divides by the accumulation steps (`loss_is_scaled_for_ga=False`) |
| diversity advantage | added to GRPO's final advantages | added to RLOO's final advantages, after its `reward_clip_range` and `normalize_advantages`, so neither rescales it |
"""

from __future__ import annotations

import textwrap

import torch
from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

from trl_diversity.trainer.diversity_cfg_config import DiversityCFGConfig, DiversityCFGRLOOConfig
from trl_diversity.trainer.method import DiversityCFGMixin
from trl_diversity.trainer.normalization import reduce_like_grpo, reduce_like_rloo
from trl_diversity.trainer.teacher.cfg_teacher import TEACHER_ADAPTER

__all__ = ["TEACHER_ADAPTER", "DiversityCFGRLOOTrainer", "DiversityCFGTrainer"]

# The method's paper, cited by both trainers' model cards (TRL's `_paper`; GRPO's own names DeepSeekMath).
CIDERON_ET_AL = {
    "title": "Diversity-Rewarded CFG Distillation",
    "id": "2410.06084",
    # docstyle-ignore
    "citation": textwrap.dedent("""\
        @inproceedings{cideron2025diversity,
            title        = {{Diversity-Rewarded CFG Distillation}},
            author       = {Geoffrey Cideron and Andrea Agostinelli and Johan Ferret and Sertan Girgin and Romuald Elie and Olivier Bachem and Sarah Perrin and Alexandre Ram{\'e}},
            booktitle    = {International Conference on Learning Representations},
            year         = 2025,
            eprint       = {arXiv:2410.06084},
        }"""),
}


class DiversityCFGTrainer(DiversityCFGMixin, GRPOTrainer):
    """Diversity-rewarded CFG distillation (Cideron et al., ICLR 2025) as a drop-in `GRPOTrainer`.

    The constructor is GRPO's. `reward_funcs` is optional: the diversity reward and the distillation loss are built
    in, and extra reward functions add quality rewards through GRPO's own machinery (normalised as GRPO does; a group
    reward enters there through `trl_diversity.rewards.as_reward_function`).

    Example:

    ```python
    from peft import LoraConfig
    from trl_diversity import DiversityCFGConfig, DiversityCFGTrainer
    from trl_diversity.data import load_prompts

    trainer = DiversityCFGTrainer(
        model="default",  # the bundled SmolLM2-135M-Instruct; any causal LM id or folder
        args=DiversityCFGConfig.default_job("outputs/mine", guidance_scale=3.0, diversity_coef=15.0),
        train_dataset=load_prompts("train", conversational=True),
        peft_config=LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"),
    )
    trainer.train()
    ```

    Args:
        model (`str` or `PreTrainedModel` or `PeftModel`):
            The policy to train, as in `GRPOTrainer`; also the CFG teacher (frozen, copied before training) unless
            `args.teacher_model` names another. `"default"` is the bundled SmolLM2-135M-Instruct.
        reward_funcs (reward function or list of them, *optional*):
            Quality rewards, as in `GRPOTrainer`. None: the method's own terms only (CFG distillation and the
            diversity reward).
        args ([`DiversityCFGConfig`], *optional*):
            GRPO's configuration plus the method's fields. None: the config's defaults, named after the model.
        train_dataset, eval_dataset, processing_class, reward_processing_classes, callbacks, optimizers,
        quantization_config, peft_config, tools, rollout_func:
            As in `GRPOTrainer`.
        environment_factory:
            As in `GRPOTrainer`; refused while distilling (`distill_coef > 0`): each environment renders prompts
            with its own tools, so there is no single null context for CFG.
    """

    _tag_names = ["trl", "grpo", "trl-diversity", "cfg-distillation"]
    _name = "DiversityCFG"
    _paper = CIDERON_ET_AL
    _config_class = DiversityCFGConfig
    _trl_config_class = GRPOConfig

    def __init__(
        self,
        model,
        reward_funcs=None,
        args: DiversityCFGConfig | None = None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        reward_processing_classes=None,
        callbacks=None,
        optimizers=(None, None),
        quantization_config=None,
        peft_config=None,
        tools=None,
        rollout_func=None,
        environment_factory=None,
    ):
        model, args, setup = self._prepare_method(
            model, reward_funcs, args, train_dataset, eval_dataset, peft_config, environment_factory
        )
        check_model_name(model)
        # GRPO refuses to start without a reward source. With the method on and no quality reward, it gets a
        # placeholder for its construction only, removed right after: the reward lists stay what the user passed.
        placeholder = setup.method_on and not setup.user_reward_funcs
        user_weights = args.reward_weights
        if placeholder:
            reward_funcs = [_no_quality_reward]
            if user_weights is not None:
                args.reward_weights = [0.0, *user_weights]
            if reward_processing_classes is not None:
                listed = reward_processing_classes if isinstance(reward_processing_classes, list) else [None]
                reward_processing_classes = [None, *listed]
        try:
            super().__init__(
                model=model,
                reward_funcs=reward_funcs,
                args=args,
                train_dataset=train_dataset,
                eval_dataset=eval_dataset,
                processing_class=processing_class,
                reward_processing_classes=reward_processing_classes,
                callbacks=callbacks,
                optimizers=optimizers,
                quantization_config=quantization_config,
                peft_config=peft_config,
                tools=tools,
                rollout_func=rollout_func,
                environment_factory=environment_factory,
            )
        finally:
            args.reward_weights = user_weights
        if placeholder:
            del self.reward_funcs[0], self.reward_func_names[0], self.reward_processing_classes[0]
            self.reward_weights = self.reward_weights[1:]
        if not self.reward_funcs:
            # No reward column at all: both aggregations give zero GRPO advantages, and only the sum form accepts an
            # empty reward matrix (normalize_then_sum reshapes it by the number of reward functions).
            self.multi_objective_aggregation = "sum_then_normalize"
        self._finish_method(setup, train_dataset)

    def _rewards_without_quality_reward(self, global_size: int) -> torch.Tensor:
        # An empty reward matrix: GRPO's advantages are then 0 (its KL is a loss term, unaffected).
        return torch.zeros(global_size, 0, device=self.accelerator.device)

    def _log_zero_quality_reward(self, mode: str) -> None:
        # GRPO reads an empty reward matrix as "no reward returned" and logs NaN; with no quality reward its reward is
        # identically 0, so log what a zero reward gives (as before the diversity left GRPO's columns).
        metrics = self._metrics[mode]
        metrics["reward"][-1], metrics["reward_std"][-1], metrics["frac_reward_zero_std"][-1] = 0.0, 0.0, 1.0

    def _reduce_distillation(self, per_token, mask, inputs, mode):
        return reduce_like_grpo(
            per_token,
            mask,
            self.loss_type,
            # Set by `Trainer.train()`: absent when evaluating before any training step (and unused in evaluation).
            accumulation_steps=self.current_gradient_accumulation_steps if mode == "train" else 1,
            max_completion_length=self.max_completion_length,
            num_items_in_batch=inputs.get("num_items_in_batch"),
            num_processes=self.accelerator.num_processes,
            steps_per_generation=self.args.steps_per_generation,
            training=mode == "train",
        )


class DiversityCFGRLOOTrainer(DiversityCFGMixin, RLOOTrainer):
    """Diversity-rewarded CFG distillation as a drop-in `RLOOTrainer`: leave-one-out baselines, and RLOO's KL
    penalty (`beta`, 0.05 by default) in the reward.

    The constructor is RLOO's, with `reward_funcs` optional: the diversity reward and the distillation loss are built
    in, and extra reward functions add quality rewards through RLOO's own machinery (clipped by
    `reward_clip_range`, baselined leave-one-out, normalised with `normalize_advantages` as RLOO does). The diversity
    advantage `diversity_coef * (r_i - b_i)` is added after all of that, so neither option rescales it.

    Example:

    ```python
    from trl_diversity import DiversityCFGRLOOConfig, DiversityCFGRLOOTrainer
    from trl_diversity.data import load_prompts

    trainer = DiversityCFGRLOOTrainer(
        model="default",
        args=DiversityCFGRLOOConfig.default_job("outputs/mine-rloo", num_generations=4, logging_steps=1),
        train_dataset=load_prompts("train", conversational=True),
    )
    trainer.train()  # RLOO sums over tokens: its loss reads tens of times GRPO's (docs/guide/training.md)
    ```

    Args:
        model (`str` or `PreTrainedModel` or `PeftModel`):
            The policy to train, as in `RLOOTrainer`; also the CFG teacher (frozen, copied before training) unless
            `args.teacher_model` names another. `"default"` is the bundled SmolLM2-135M-Instruct.
        reward_funcs (reward function or list of them, *optional*):
            Quality rewards, as in `RLOOTrainer`. None: the method's own terms only.
        args ([`DiversityCFGRLOOConfig`], *optional*):
            RLOO's configuration plus the method's fields. None: the config's defaults, named after the model.
        train_dataset, eval_dataset, processing_class, reward_processing_classes, callbacks, optimizers,
        quantization_config, peft_config:
            As in `RLOOTrainer`.
    """

    _tag_names = ["trl", "rloo", "trl-diversity", "cfg-distillation"]
    _name = "DiversityCFG-RLOO"
    _paper = CIDERON_ET_AL
    _config_class = DiversityCFGRLOOConfig
    _trl_config_class = RLOOConfig

    def __init__(
        self,
        model,
        reward_funcs=None,
        args: DiversityCFGRLOOConfig | None = None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        reward_processing_classes=None,
        callbacks=None,
        optimizers=(None, None),
        quantization_config=None,
        peft_config=None,
    ):
        model, args, setup = self._prepare_method(model, reward_funcs, args, train_dataset, eval_dataset, peft_config)
        check_model_name(model)
        super().__init__(
            model=model,
            # RLOO accepts an empty list (no placeholder needed); it reads None as one reward function `None`.
            reward_funcs=reward_funcs if reward_funcs is not None else [],
            args=args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            reward_processing_classes=reward_processing_classes,
            callbacks=callbacks,
            optimizers=optimizers,
            quantization_config=quantization_config,
            peft_config=peft_config,
        )
        self._finish_method(setup, train_dataset)

    def _check_algorithm_inputs(self, args, user_reward_funcs):
        if args.normalize_advantages and not user_reward_funcs and args.beta != 0:
            # With no quality reward RLOO's reward is `-beta * KL` alone; normalised by its own std, any `beta` gives
            # the same advantages, so `beta` would stop meaning anything.
            raise ValueError(
                "normalize_advantages=True with no reward_funcs would normalise RLOO's only reward, -beta * KL, by its "
                "own standard deviation, so beta would have no effect. Set normalize_advantages=False (the default), "
                "or pass a quality reward in reward_funcs."
            )

    def _rewards_without_quality_reward(self, global_size: int) -> torch.Tensor:
        # RLOO reads a row with no finite reward as "unscorable" (`isnan(row).all()`, True for an empty row): the whole
        # row, KL penalty included, would get a zero advantage. One zero column keeps every row scorable. Its weight
        # is RLOO's empty `reward_weights` (the user's lists stay as passed): `[N, 1] * [1, 0]` broadcasts to an
        # empty product, so the quality reward sums to 0 and `-beta * KL` still enters the leave-one-out advantages.
        # (tests/trainer/test_rloo.py checks that the KL penalty survives.)
        return torch.zeros(global_size, 1, device=self.accelerator.device)

    def _log_zero_quality_reward(self, mode: str) -> None:
        return  # with the zero column RLOO logs a reward of 0 itself (its KL penalty is logged as `kl`)

    def _reduce_distillation(self, per_token, mask, inputs, mode):
        return reduce_like_rloo(per_token, mask)


def check_model_name(model) -> None:
    """A model name that cannot load (a path that does not exist, a folder that holds no model, a hub id with the hub
    offline and no cached copy) is refused in one line, as on the command line, before TRL tries to load it (its
    error for a missing path is `OSError: Repo id must be in the form ...`)."""
    if isinstance(model, str):
        from trl_diversity.cli.arguments import check_model  # the command line's check: standard library only

        check_model(model, "model")


def _no_quality_reward(completions, **kwargs):
    """Placeholder reward source for GRPO's constructor only (see `DiversityCFGTrainer.__init__`); never called."""
    raise RuntimeError("The placeholder reward should have been removed after construction.")
