"""Every private part of TRL this package relies on, in one place.

The method hooks into `GRPOTrainer` where TRL offers no public extension point, and runs TRL's chunked divergence
kernel directly. A TRL release may rename or change any of these without notice, so:

- each one is imported here, and only here;
- what has a safe replacement falls back to it (below, with the reason);
- what has none fails at import with a message that names the missing part and the TRL version this was built on;
- `tests/trainer/test_trl_contract.py` checks the rest, the hooks' names, signatures and meaning, and fails with a message
  naming the TRL change. The copy of GRPO's loss reduction (`normalization.py`) is checked against GRPO's own
  `_compute_loss` there too (`tests/trainer/test_normalization.py`).

`pyproject.toml` pins TRL to the minor series these checks passed on (see the comment there).
"""

from __future__ import annotations

import contextlib

# The TRL series the contract tests last passed on.
TESTED_TRL_SERIES = "1.16"


def _missing(name: str, error: ImportError) -> ImportError:
    import trl

    return ImportError(
        f"trl_diversity needs {name} from TRL, which TRL {trl.__version__} does not provide ({error}). It was built "
        f"and tested on TRL {TESTED_TRL_SERIES}.x: install `trl>={TESTED_TRL_SERIES},<1.17`, or report the TRL change."
    )


try:  # Guarded: the chunked divergence kernel and its tile sizes (module-level constants).
    from trl.kernels import chunked_divergence
    from trl.kernels.chunked_divergence import ChunkedDivergenceFunction
except ImportError as error:  # no replacement: the distillation loss is this kernel
    raise _missing("trl.kernels.chunked_divergence.ChunkedDivergenceFunction", error) from error

try:
    from trl.kernels.chunked_logprob import _use_triton
except ImportError:  # Fallback: "never Triton" only decides whether small batches build their logits in full,

    def _use_triton(device) -> bool:  # a choice of speed, not of result (both paths give the same divergence).
        return False


try:
    from trl.trainer.utils import maybe_gather_lm_head_ctx
except ImportError:  # Fallback: gathering only matters for a ZeRO-3-partitioned head; without DeepSpeed ZeRO-3

    def maybe_gather_lm_head_ctx(*tensors):  # the head is whole and there is nothing to gather.
        from transformers.integrations import is_deepspeed_zero3_enabled

        if is_deepspeed_zero3_enabled():
            raise _missing("trl.trainer.utils.maybe_gather_lm_head_ctx (needed under ZeRO-3)", ImportError())
        return contextlib.nullcontext()


try:  # Public-looking helpers that TRL does not document: no replacement, so a clear message if they move.
    from trl.models.utils import disable_gradient_checkpointing, prepare_deepspeed, prepare_fsdp
    from trl.trainer.utils import create_model_from_path, disable_dropout_in_model, get_config_model_id, use_adapter
except ImportError as error:
    raise _missing("trl.models.utils / trl.trainer.utils helpers", error) from error

# The private members of TRL's GRPOTrainer and RLOOTrainer that the method overrides, with the parameters it assumes.
# The contract tests check every one against both trainers of the installed TRL.
TRAINER_HOOKS = {
    "_calculate_rewards": ("inputs", "prompts", "completions", "completion_ids_list"),
    "_generate_and_score_completions": ("inputs",),
    "_compute_loss": ("model", "inputs"),
    "_tokenize_prompts": ("prompts",),
    "_send_telemetry": (),
}
# The state the shared implementation (`method.py`) reads, on either trainer.
TRAINER_STATE = (
    "_metrics",  # {"train"|"eval": defaultdict(list)} of logged means
    "_logs",  # {"extra": defaultdict(list), ...}: the completions table's columns
    "num_generations",
    "num_generations_eval",
    "max_completion_length",
    "reward_funcs",
    "reward_func_names",
    "reward_weights",
    "reward_processing_classes",
    "ref_model",
    "_tokenizer",
)
# What `DiversityCFGTrainer` reads on GRPO alone (RLOO has no loss types and one way to aggregate rewards).
GRPO_ONLY_STATE = (
    "loss_type",  # the reduction `reduce_like_grpo` mirrors
    "multi_objective_aggregation",  # reset when no reward column is left
)

__all__ = [
    "ChunkedDivergenceFunction",
    "GRPO_ONLY_STATE",
    "TESTED_TRL_SERIES",
    "TRAINER_HOOKS",
    "TRAINER_STATE",
    "chunked_divergence",
    "create_model_from_path",
    "disable_dropout_in_model",
    "disable_gradient_checkpointing",
    "get_config_model_id",
    "maybe_gather_lm_head_ctx",
    "prepare_deepspeed",
    "prepare_fsdp",
    "use_adapter",
    "_use_triton",
]
