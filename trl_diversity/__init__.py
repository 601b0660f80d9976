"""trl-diversity: diversity-rewarded CFG distillation as a drop-in TRL trainer.

The package is grouped by layer, and the layers depend one way (math -> trainer -> toolkit -> command line):

- `trainer/`: the training method: config, trainer, CFG teacher, guidance, divergence, loss reduction, safety;
- `rewards/`: group-level rewards that see all `k` completions of a prompt (the diversity reward among them);
- `toolkit/`: the quality-diversity toolkit: generation, evaluation, merging, sweep, dial, reports;
- `cli/`: the `trl-diversity` command line;
- `defaults` (the offline default models), `data` (the bundled prompts) and `atomic` (crash-safe writes).

Public names are imported lazily, so `trl-diversity --help` or a mistyped flag answers before TRL and torch load.
"""

from __future__ import annotations

import importlib
import logging
import warnings

__version__ = "0.1.0"

# transformers deprecated `is_gradient_checkpointing` and `gradient_checkpointing_enable/disable` in favour of
# `*activation_checkpointing*` and warns (FutureWarning) on every use. TRL's GRPO (around each generation) and PEFT
# (when an adapter is attached) still use the old names, so every training run and every adapter load warned about
# code the user does not own and cannot change. Only those messages are silenced, only from transformers' module.
# (The config's own `gradient_checkpointing` warning is fixed at its source in `DiversityCFGConfig`.)
warnings.filterwarnings(
    "ignore",
    message=r"`(is_gradient_checkpointing|gradient_checkpointing_enable|gradient_checkpointing_disable)` is deprecated",
    category=FutureWarning,
    module=r"transformers\.modeling_utils",
)
# The same rename in TrainingArguments: every `trl.GRPOConfig` warns, because GRPO's own default sets the old
# `gradient_checkpointing` field (to True), so plain-TRL code that uses our group rewards (`as_reward_function`) warned
# about a field its author never typed. `DiversityCFGConfig` moves the value to the new name instead.
warnings.filterwarnings(
    "ignore",
    message=r"`gradient_checkpointing(_kwargs)?` is deprecated",
    category=FutureWarning,
    module=r"transformers\.training_args",
)


class _DropDeepSpeedCpuFallback(logging.Filter):
    """DeepSpeed, which accelerate and transformers import whenever it is installed (the test extras install it),
    logs "Setting accelerator to CPU. If you have GPU or other accelerator, we were unable to detect it." to stdout
    on every machine where torch sees no GPU, whether or not DeepSpeed is used. Only that message is dropped: DeepSpeed
    warns exactly when torch finds no CUDA device, and a run that expected one says so itself (it trains on the CPU)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Setting accelerator to CPU.")


# DeepSpeed's logger is named "DeepSpeed"; a filter added before DeepSpeed configures it is kept (it only adds a
# handler and a level).
logging.getLogger("DeepSpeed").addFilter(_DropDeepSpeedCpuFallback())

# public name -> module that defines it
_EXPORTS = {
    "DiversityCFGConfig": "trl_diversity.trainer.diversity_cfg_config",
    "DiversityCFGTrainer": "trl_diversity.trainer.diversity_cfg_trainer",
    "DiversityCFGRLOOConfig": "trl_diversity.trainer.diversity_cfg_config",
    "DiversityCFGRLOOTrainer": "trl_diversity.trainer.diversity_cfg_trainer",
    "chunked_token_divergence": "trl_diversity.trainer.divergence",
    "token_divergence": "trl_diversity.trainer.divergence",
    "guided_log_probs": "trl_diversity.trainer.guidance",
    "diversity_advantages": "trl_diversity.rewards.baselines",
    "group_diversity_rewards": "trl_diversity.rewards.diversity",
    "pairs_among_others_baselines": "trl_diversity.rewards.baselines",
    "as_reward_function": "trl_diversity.rewards.reward_function",
    "batched_group_reward": "trl_diversity.rewards.group",
    "score_groups": "trl_diversity.rewards.group",
    "lerp_merge": "trl_diversity.toolkit.merging",
    "generate_records": "trl_diversity.toolkit.generation",
    "summarize": "trl_diversity.toolkit.evaluation",
    "run_sweep": "trl_diversity.toolkit.sweep",
    "load_prompts": "trl_diversity.data",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'trl_diversity' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return sorted([*globals(), *_EXPORTS])
