"""`DiversityCFGMixin`: diversity-rewarded CFG distillation (Cideron et al., ICLR 2025), for any of TRL's online RL
trainers. `diversity_cfg_trainer.py` puts it on `GRPOTrainer` and on `RLOOTrainer`; this module is everything the two
share, so the method has one implementation.

What the mixin adds to the TRL trainer, and where:

- construction (`_prepare_method` before the TRL constructor, `_finish_method` after it): checks the inputs before
  any model loads, resolves the diversity term (`diversity_reward`: a built-in measure or the user's group reward;
  the embedder is loaded only for `embedding`) and sets up the frozen CFG teacher. The TRL trainer's reward lists
  stay exactly what the user passed: the diversity term is not one of its reward columns.
- `_calculate_rewards`: both trainers call it on every process with exactly what reward functions get; the
  diversity term is scored there, whole groups gathered across processes (a prompt's group can span them), each
  group once.
- `_generate_and_score_completions`: adds `diversity_coef * (r_i - b_i)` to the algorithm's final advantages (with
  a `diversity_target`, the coefficient is a controller's, updated from each training batch's diversity; after
  any normalisation or clipping of its own, and not divided by any standard deviation, so `diversity_coef` is a
  real weight) and runs the teacher on the conditional and unconditional contexts.
- `_compute_loss`: the algorithm's loss plus `distill_coef` times the teacher-student divergence, computed from the
  hidden states of the very forward pass the algorithm runs for its log-probabilities, and reduced the way the
  algorithm reduces its own policy term (`_reduce_distillation`).

Three hooks differ between algorithms and are defined by each trainer: `_rewards_without_quality_reward`,
`_log_zero_quality_reward` and `_reduce_distillation`. With `distill_coef=0` and `diversity_coef=0` none of this
runs (no embedder, no teacher, no extra metric): the trainer is the TRL trainer on the user's `reward_funcs`.
"""

from __future__ import annotations

import contextlib
import copy
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate.utils import is_peft_model
from trl.data_utils import is_conversational

from trl_diversity.atomic import write_text_atomic
from trl_diversity.defaults import DEFAULT_MODEL_NAMES, default_model_path_if_converted, resolve_model
from trl_diversity.rewards.baselines import group_advantages, is_pairwise
from trl_diversity.rewards.group import LOCAL_KWARGS, score_groups
from trl_diversity.rewards.registry import resolve_group_reward
from trl_diversity.trainer.divergence import chunked_token_divergence
from trl_diversity.trainer.diversity_controller import (
    DiversityCoefController,
    DiversityControllerCallback,
    current_controller,
)
from trl_diversity.trainer.hidden_states import capture_last_hidden_state, language_model
from trl_diversity.trainer.logit_scale import logit_scale
from trl_diversity.trainer.model_card import name_local_base_model, name_local_folder_in_example
from trl_diversity.trainer.safety import NonFiniteStepGuard, ResumeNotice, SignalCheckpoint
from trl_diversity.trainer.student_positions import positions_from_attention_mask
from trl_diversity.trainer.teacher import CFGTeacher, teacher_model_is_missing
from trl_diversity.trainer.teacher_quality import relative_to_group_best, sampled_token_mask, teacher_likelihood
from trl_diversity.trainer.trl_internals import get_config_model_id
from trl_diversity.trainer.validation import check_chat_template, check_distillation_inputs, check_prompt_dataset
from trl_diversity.vllm_cpu import prepare_vllm


@dataclass
class MethodSetup:
    """What `_prepare_method` learns before the TRL constructor runs, for `_finish_method` after it."""

    method_on: bool
    user_reward_funcs: list
    initial_policy: torch.nn.Module | None  # a copy of an in-memory model, taken before training moves it
    user_adapter_model: bool  # the user passed a PeftModel: its initial adapter is the teacher


class DiversityCFGMixin:
    """The method, on top of a TRL online RL trainer (put it first among the bases)."""

    _config_class: type  # the config the trainer takes (DiversityCFGConfig, DiversityCFGRLOOConfig)
    _trl_config_class: type  # the TRL config it extends (GRPOConfig, RLOOConfig), named in errors

    # ----------------------------------------------------------------------------------------------------------------
    # Construction

    def _prepare_method(
        self, model, reward_funcs, args, train_dataset, eval_dataset, peft_config, environment_factory=None
    ):
        """Everything before the TRL constructor: defaults, checks that need no model, the diversity term.

        Returns `(model, args, setup)`."""
        config_class = self._config_class
        # Adapters of the default model record their base as `default` (see `_save`).
        self._default_base = None
        if isinstance(model, str) and model.lower() in DEFAULT_MODEL_NAMES:
            model = self._default_base = resolve_model(model)  # the bundled SmolLM2, as on the command line
        elif isinstance(model, str) and Path(model) == default_model_path_if_converted():
            self._default_base = model  # the command line passes the converted folder itself
        if args is None:
            name = model if isinstance(model, str) else get_config_model_id(model.config)
            args = config_class(f"{name.split('/')[-1] or 'model'}-DiversityCFG")
        elif not isinstance(args, config_class):
            base = self._trl_config_class.__name__
            raise TypeError(
                f"{type(self).__name__} needs a {config_class.__name__}, got {type(args).__name__}. Build one with "
                f"the same fields: {config_class.__name__}(**your_{base.lower()}.to_dict()) plus the diversity/CFG "
                "fields."
            )
        user_reward_funcs = (
            [] if reward_funcs is None else list(reward_funcs) if isinstance(reward_funcs, list) else [reward_funcs]
        )
        method_on = args.distill_coef > 0 or args.diversity_coef > 0
        if not method_on and not user_reward_funcs and environment_factory is None:
            raise ValueError(
                "Nothing to train on: distill_coef=0 and diversity_coef=0, and no reward_funcs were given. Set "
                "distill_coef > 0 (CFG distillation), diversity_coef > 0 (diversity reward), or pass reward_funcs."
            )
        self._check_algorithm_inputs(args, user_reward_funcs)
        prepare_vllm(args)  # vLLM on a CPU needs one change before TRL builds its engine (vllm_cpu.py)
        # An environment may supply the prompts; only CFG needs them non-empty (it contrasts them with the null one).
        check_prompt = dict(require_prompt=environment_factory is None, allow_empty=args.distill_coef == 0)
        check_prompt_dataset(train_dataset, **check_prompt)
        evaluation_sets = eval_dataset if isinstance(eval_dataset, dict) else {"": eval_dataset}
        for split, dataset in evaluation_sets.items():
            check_prompt_dataset(dataset, f"eval_dataset[{split!r}]" if split else "eval_dataset", **check_prompt)
        if args.distill_coef > 0:
            check_distillation_inputs(
                [train_dataset, *evaluation_sets.values()], environment_factory=environment_factory
            )
        if args.distill_coef > 0 and args.teacher_model is not None and teacher_model_is_missing(args.teacher_model):
            raise ValueError(
                f"teacher_model {args.teacher_model!r} does not exist (no such folder, and not in the local hub cache "
                "while the hub is offline). Pass the folder of a checkpoint that shares the student's tokenizer, or "
                "leave teacher_model unset to use the initial policy as the teacher."
            )

        # A model built in memory has no path to reload the initial policy from: copy it before training moves it.
        initial_policy = None
        if (
            args.distill_coef > 0
            and args.teacher_model is None
            and peft_config is None
            and not isinstance(model, str)
            and not is_peft_model(model)
        ):
            initial_policy = copy.deepcopy(model)
        user_adapter_model = peft_config is None and not isinstance(model, str) and is_peft_model(model)

        # The diversity term is measured whenever the method runs, also at diversity_coef=0 (logged, to watch CFG
        # distillation collapse diversity), and never with the method off. Resolved before any model loads, so a bad
        # name or a missing embedder fails fast.
        self.diversity_reward = (
            resolve_group_reward(args.diversity_reward, args.diversity_embedder, device=args.device)
            if method_on
            else None
        )
        self.embedder = getattr(self.diversity_reward, "embedder", None)  # loaded for diversity_reward="embedding"
        self._latest_diversity_rewards: torch.Tensor | None = None
        return model, args, MethodSetup(method_on, user_reward_funcs, initial_policy, user_adapter_model)

    def _finish_method(self, setup: MethodSetup, train_dataset) -> None:
        """Everything after the TRL constructor: safety callbacks and the teacher."""
        args = self.args
        check_chat_template(train_dataset, self._tokenizer)
        self.interrupted = False  # set when SIGINT/SIGTERM stopped the run after saving a checkpoint
        # With the method off the guard still protects the weights, but logs no metric of its own: the logs stay
        # the TRL trainer's.
        self.add_callback(NonFiniteStepGuard(self, args.max_nonfinite_steps, log_metric=setup.method_on))
        self.add_callback(SignalCheckpoint(self))
        self.add_callback(ResumeNotice())

        # The frozen CFG teacher (teacher/cfg_teacher.py), only when distilling.
        self.cfg_teacher = (
            CFGTeacher(self, setup.initial_policy, setup.user_adapter_model) if args.distill_coef > 0 else None
        )
        # With a diversity target, a controller moves the coefficient; its callback checkpoints it.
        if args.diversity_target is not None:
            controller = DiversityCoefController(
                args.diversity_target,
                args.diversity_coef,
                warmup_steps=args.diversity_target_warmup_steps,
                rate=args.diversity_target_rate,
            )
            self.add_callback(DiversityControllerCallback(controller))

    @property
    def teacher(self) -> torch.nn.Module | None:
        """The teacher's separate frozen model; None without distillation, or with LoRA (the teacher is then the
        policy with its adapter off)."""
        return None if self.cfg_teacher is None else self.cfg_teacher.model

    @property
    def diversity_coef(self) -> float:
        """The diversity coefficient in force: `diversity_coef`, or the controller's current value with a target.
        (Looked up each time: on resume the Trainer may replace the controller's callback.)"""
        controller = current_controller(self)
        return self.args.diversity_coef if controller is None else controller.coef

    def create_model_card(self, model_name=None, dataset_name=None, tags=None):
        super().create_model_card(model_name=model_name, dataset_name=dataset_name, tags=tags)
        if self.is_world_process_zero():  # TRL's card says "fine-tuned version of [None]" for a local base
            card = Path(self.args.output_dir) / "README.md"
            name_local_base_model(card, get_config_model_id(self.model.config))
            name_local_folder_in_example(card, self.args.output_dir)

    def _save(self, output_dir: str | None = None, state_dict=None):
        super()._save(output_dir, state_dict)
        self._record_portable_base(Path(output_dir or self.args.output_dir))

    def _record_portable_base(self, folder: Path) -> None:
        """An adapter of the default model names its base `default`, not this machine's cache folder, so that a copy
        on another machine finds its base there (the loaders resolve `default` to that machine's copy). Written into
        the saved file only: in memory the base stays the local folder, where PEFT finds `config.json` when saving
        instead of looking `default` up on a hub."""
        adapter_config = folder / "adapter_config.json"
        if self._default_base is None or not adapter_config.is_file():
            return
        config = json.loads(adapter_config.read_text())
        if config.get("base_model_name_or_path") == self._default_base:
            config["base_model_name_or_path"] = DEFAULT_MODEL_NAMES[0]
            write_text_atomic(adapter_config, json.dumps(config, indent=2, sort_keys=True) + "\n")

    def _send_telemetry(self):
        # TRL pings the hub with usage telemetry when a trainer is built. This project makes no network call the
        # user did not ask for (its default path runs with no hub at all), so the ping is off. README: "Offline".
        return

    # ----------------------------------------------------------------------------------------------------------------
    # Diversity term

    def _generate(self, prompts):
        generated = super()._generate(prompts)
        # GRPO returns (prompt_ids, completion_ids, tool_mask, ...), RLOO (no tools) three items. The tool mask is kept
        # as generated: under `mask_truncated_completions` TRL zeroes a truncated row's `tool_mask` whole along with
        # its `completion_mask`, which would hide which of its tokens the model sampled.
        self._generated_tool_mask = generated[2] if len(generated) > 3 else None
        return generated

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        # GRPO and RLOO call this on every process together, with exactly what reward functions receive: the place to
        # score the diversity term (its scoring gathers across processes). It is kept out of their reward columns.
        self._latest_diversity_rewards = self._score_diversity(inputs, prompts, completions, completion_ids_list)
        if self.reward_funcs:
            return super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        # No quality reward: the algorithm's own stand-in, without its warning that "all reward functions returned
        # None" (there are none).
        return self._rewards_without_quality_reward(len(prompts) * self.accelerator.num_processes)

    def _score_diversity(self, inputs, prompts, completions, completion_ids_list) -> torch.Tensor | None:
        """The diversity reward `r_i` of every completion of the global batch (`[N]`), or None when not measured."""
        num_generations = self.num_generations if self.model.training else self.num_generations_eval
        if self.diversity_reward is None or num_generations < 2:
            return None  # the method is off, or (evaluation with one sample per prompt) there is nothing to compare
        # The same per-completion columns the trainer passes its reward functions.
        keys = [key for key in inputs[0] if key not in ("prompt", "completion", "completion_ids", *LOCAL_KWARGS)]
        columns = {key: [example[key] for example in inputs] for key in keys}
        columns["completion_ids"] = completion_ids_list
        rewards = score_groups(
            self.diversity_reward,
            prompts,
            completions,
            num_generations,
            columns,
            extra={"trainer_state": self.state, "log_metric": self._log_metric},
            name=f"diversity_reward={self.args.diversity_reward}",
        )
        return torch.tensor(rewards, dtype=torch.float32)

    # ----------------------------------------------------------------------------------------------------------------
    # The trainer's hooks (the same names and signatures in GRPO and RLOO)

    def _student_positions(self):
        """While distilling, the student's (and TRL's reference's) forwards count positions as the teacher does
        (`student_positions.py`); with distillation off, nothing changes."""
        if self.args.distill_coef == 0:
            return contextlib.nullcontext()
        return positions_from_attention_mask(self.model, self.ref_model)

    def _generate_and_score_completions(self, inputs):
        with self._student_positions():
            output = super()._generate_and_score_completions(inputs)
        mode = "train" if self.model.training else "eval"
        if not self.reward_funcs:
            self._log_zero_quality_reward(mode)
        if self.args.distill_coef > 0:  # before the diversity term, which may weigh samples by the teacher
            output["teacher_hidden_states"] = self.cfg_teacher.hidden_states(
                output, is_conversational(inputs[0]), prompts=[example["prompt"] for example in inputs]
            )
        rewards = self._latest_diversity_rewards
        if rewards is not None:
            self._add_diversity_advantages(output, rewards, mode)
        elif self.diversity_reward is not None:  # one sample per prompt (evaluation): nothing to compare
            # Keeps the completions table's columns of equal length.
            global_size = output["advantages"].shape[0] * self.accelerator.num_processes
            self._logs["extra"]["diversity_reward"].extend([float("nan")] * global_size)
        return output

    def _add_diversity_advantages(self, output: dict, rewards: torch.Tensor, mode: str) -> None:
        """`diversity_coef * (r_i - b_i)` added to the algorithm's final advantages (this process's slice), and the
        metrics."""
        num_generations = self.num_generations if mode == "train" else self.num_generations_eval
        pairwise = is_pairwise(self.diversity_reward)
        coef = self.diversity_coef
        metrics = self._metrics[mode]
        trained, exact_baseline = rewards, pairwise
        if self.args.diversity_quality == "teacher_likelihood":  # quality x diversity (teacher_quality.py)
            likelihood = self._teacher_likelihood(output)
            trained = relative_to_group_best(likelihood, num_generations) * rewards
            exact_baseline = False  # a product is no mean of pairwise terms: RLOO's baseline
            metrics["diversity/teacher_likelihood"].append(likelihood.mean().item())
        advantages = coef * group_advantages(trained, num_generations, exact_baseline)
        local_size = output["advantages"].shape[0]
        start = self.accelerator.process_index * local_size
        if coef > 0:
            local = advantages[start : start + local_size].to(output["advantages"].device)
            output["advantages"] = output["advantages"] + local
            _add_to_last(self._logs["advantages"], advantages.tolist())  # the completions table shows what trains
        if pairwise:  # the group's mean reward is its mean pairwise dissimilarity: the paper's diversity
            metrics["diversity/pairwise"].append(rewards.mean().item())
        metrics["diversity/reward/mean"].append(rewards.mean().item())
        metrics["diversity/reward/std"].append(rewards.std().item() if rewards.numel() > 1 else 0.0)
        metrics["diversity/advantage_abs"].append(advantages.abs().mean().item())
        self._logs["extra"]["diversity_reward"].extend(rewards.tolist())  # a column of the completions table
        controller = current_controller(self)
        if controller is not None:
            metrics["diversity/coef"].append(coef)  # the coefficient this batch was trained with
            if controller.target is not None:  # None during the warm-up of an "initial" target
                metrics["diversity/target"].append(controller.target)
            if mode == "train":
                # `rewards` covers the whole batch of every process: each process takes the same step.
                warming_up = controller.warming_up
                controller.update(rewards.mean().item())
                if warming_up and not controller.warming_up and self.accelerator.is_main_process:
                    # The end of an "initial" target's warm-up: say what it measured (the log only shows it later).
                    print(
                        f"Diversity target set to {controller.target:.4g} ({controller.target_spec.describe()}, "
                        f"measured over the first {controller.warmup_steps} generation batches)."
                    )

    def _teacher_likelihood(self, output: dict) -> torch.Tensor:
        """`q_i` of every completion of the global batch (`[N]`, in the order of the group rewards)."""
        # The tokens the student really sampled: TRL's `completion_mask` zeroes a truncated completion whole under
        # `mask_truncated_completions`, and tool results are not the model's tokens.
        sampled = sampled_token_mask(
            output["completion_ids"],
            output["completion_mask"],
            self._tokenizer.pad_token_id,
            self._tool_mask_as_generated(output),
        )
        local = teacher_likelihood(
            output["teacher_hidden_states"],
            output["completion_ids"],
            sampled,
            self.cfg_teacher.head(),
            self.cfg_teacher.logit_scale(),
        )
        return self.accelerator.gather(local.to(self.accelerator.device)).cpu()

    def _tool_mask_as_generated(self, output: dict) -> torch.Tensor | None:
        """`[B, C]`: 0 on the tool results of this generation batch's completions, 1 elsewhere (None without tools),
        before `mask_truncated_completions` zeroed any row."""
        if output.get("tool_mask") is None:
            return None
        generated = getattr(self, "_generated_tool_mask", None)
        if generated is None or len(generated) != len(output["completion_ids"]):
            return output["tool_mask"]
        mask = torch.ones_like(output["tool_mask"])
        for row, values in enumerate(generated):
            mask[row, : len(values)] = torch.as_tensor(values[: mask.shape[1]], dtype=mask.dtype)
        return mask

    def _compute_loss(self, model, inputs):
        if self.args.distill_coef == 0:
            return super()._compute_loss(model, inputs)
        # The student's hidden states come from the forward the trainer runs anyway for its log-probabilities.
        with self._student_positions(), capture_last_hidden_state(self.accelerator.unwrap_model(model)) as captured:
            loss = super()._compute_loss(model, inputs)
        hidden = torch.cat(captured)
        prompt_length = inputs["prompt_ids"].size(1)
        completion_length = inputs["completion_ids"].size(1)
        # Position p predicts token p + 1: the completion is predicted from positions P - 1 .. P + C - 2.
        student_hidden = hidden[:, prompt_length - 1 : prompt_length - 1 + completion_length]
        mask = inputs["completion_mask"]
        if "tool_mask" in inputs:
            mask = mask * inputs["tool_mask"]
        selected = mask.bool()
        teacher_hidden = inputs["teacher_hidden_states"]
        with self.accelerator.autocast():
            divergence = chunked_token_divergence(
                student_hidden[selected],
                self._student_head(model),
                teacher_hidden[selected].to(student_hidden.device),
                self.cfg_teacher.head(),
                kind=self.args.distill_divergence,
                jsd_beta=self.args.distill_jsd_beta,
                student_logit_scale=logit_scale(model),
                teacher_logit_scale=self.cfg_teacher.logit_scale(),
            )
        per_token = torch.zeros(mask.shape, dtype=divergence.dtype, device=divergence.device)
        per_token = per_token.masked_scatter(selected, divergence)
        mode = "train" if self.model.training else "eval"
        distill_loss = self._reduce_distillation(per_token, mask, inputs, mode)
        totals = self.accelerator.reduce(
            torch.stack([divergence.detach().sum(), selected.sum().to(divergence.dtype)]), reduction="sum"
        )
        self._metrics[mode]["distill/divergence"].append((totals[0] / totals[1].clamp(min=1.0)).item())
        return loss + self.args.distill_coef * distill_loss

    def _student_head(self, model) -> torch.nn.Module:
        return language_model(self.accelerator.unwrap_model(model)).get_output_embeddings()

    # ----------------------------------------------------------------------------------------------------------------
    # What each algorithm defines (see `diversity_cfg_trainer.py`)

    def _check_algorithm_inputs(self, args, user_reward_funcs: list) -> None:
        """Refuse, before any model loads, what the algorithm accepts but the method would make meaningless."""

    def _rewards_without_quality_reward(self, global_size: int) -> torch.Tensor:
        """The reward matrix `_calculate_rewards` returns when the user passed no reward function."""
        raise NotImplementedError

    def _log_zero_quality_reward(self, mode: str) -> None:
        """Correct the algorithm's reward metrics of the step just logged, when there is no quality reward."""
        raise NotImplementedError

    def _reduce_distillation(self, per_token: torch.Tensor, mask: torch.Tensor, inputs: dict, mode: str):
        """The per-token divergence reduced to a scalar exactly as the algorithm reduces its policy term."""
        raise NotImplementedError


def _add_to_last(logged, values: list[float]) -> None:
    """Add `values` to the last `len(values)` entries of `logged` (a list or a bounded deque), in place."""
    count = min(len(values), len(logged))
    tail = [logged.pop() for _ in range(count)][::-1]
    logged.extend(old + new for old, new in zip(tail, values[len(values) - count :]))
