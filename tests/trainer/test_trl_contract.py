"""The private parts of TRL the trainer relies on (`trl_diversity/trainer/trl_internals.py`) are still what it assumes.

Each failure names the TRL change, so that a TRL release that moves one of them is caught here, not by a silently
different `distill_coef` weight in a user's run. The loss reduction has its own parity test (test_normalization.py).
"""

import inspect
from collections import defaultdict

import pytest
import trl
from transformers import AutoTokenizer
from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

from trl_diversity.data import load_prompts
from trl_diversity.trainer import trl_internals
from trl_diversity.trainer.method import DiversityCFGMixin


def parameters(function) -> tuple[str, ...]:
    return tuple(name for name in inspect.signature(function).parameters if name != "self")


def test_trl_is_the_series_the_contract_was_checked_on():
    series = ".".join(trl.__version__.split(".")[:2])
    assert series == trl_internals.TESTED_TRL_SERIES, (
        f"TRL {trl.__version__} is installed, but the contract was checked on {trl_internals.TESTED_TRL_SERIES}.x: "
        "run this file and test_normalization.py, then update TESTED_TRL_SERIES and pyproject's pin."
    )


@pytest.mark.parametrize("trainer", [GRPOTrainer, RLOOTrainer], ids=["grpo", "rloo"])
@pytest.mark.parametrize("hook, expected", list(trl_internals.TRAINER_HOOKS.items()))
def test_each_hook_keeps_its_name_and_signature(trainer, hook, expected):
    name = trainer.__name__
    assert hasattr(trainer, hook), f"TRL {trl.__version__} removed {name}.{hook}, which the method overrides"
    assert parameters(getattr(trainer, hook)) == expected, (
        f"TRL {trl.__version__} changed {name}.{hook}{inspect.signature(getattr(trainer, hook))}; "
        f"DiversityCFGMixin overrides it as ({', '.join(expected)})"
    )
    assert hook in vars(DiversityCFGMixin) or hook == "_tokenize_prompts", f"{hook} is listed but not overridden"


@pytest.mark.parametrize("trainer", [GRPOTrainer, RLOOTrainer], ids=["grpo", "rloo"])
def test_the_trainers_call_the_hooks_where_the_method_expects(trainer):
    name = trainer.__name__
    generate = inspect.getsource(trainer._generate_and_score_completions)
    assert "self._calculate_rewards(" in generate, f"{name} no longer scores rewards through _calculate_rewards"
    assert "self._logs[" in generate, f"{name} no longer fills the completions table from self._logs"
    loss = inspect.getsource(trainer._compute_loss)
    assert "self._get_per_token_logps_and_entropies(" in loss, (
        f"{name}'s loss no longer runs the policy forward through _get_per_token_logps_and_entropies: the student's "
        "hidden states are captured from that forward"
    )


def test_grpo_scales_for_accumulation_itself_and_rloo_leaves_it_to_transformers():
    assert "self.current_gradient_accumulation_steps" in inspect.getsource(GRPOTrainer._compute_loss), (
        "GRPO's loss no longer divides by current_gradient_accumulation_steps: reduce_like_grpo mirrors it"
    )
    assert GRPOTrainer.loss_is_scaled_for_ga is True and RLOOTrainer.loss_is_scaled_for_ga is False, (
        "GRPO/RLOO changed who scales the loss for gradient accumulation: reduce_like_grpo/reduce_like_rloo mirror it"
    )
    rloo_loss = inspect.getsource(RLOOTrainer._compute_loss)
    assert "per_sequence_loss.mean()" in rloo_loss, "RLOO no longer averages a per-sequence loss: see reduce_like_rloo"
    rloo_advantages = inspect.getsource(RLOOTrainer._generate_and_score_completions)
    assert "torch.isnan(rewards_per_func).all(dim=1)" in rloo_advantages, (
        "RLOO changed how it marks unscorable rows: see DiversityCFGRLOOTrainer._rewards_without_quality_reward"
    )


def test_the_chunked_divergence_kernel_takes_the_arguments_in_the_order_given():
    expected = (
        "ctx",
        "student_hidden",
        "student_weight",
        "student_bias",
        "teacher_hidden",
        "teacher_weight",
        "teacher_bias",
        "beta",
        "temperature",
        "student_logit_scale",
        "student_final_logit_softcapping",
        "teacher_logit_scale",
        "teacher_final_logit_softcapping",
    )
    actual = parameters(trl_internals.ChunkedDivergenceFunction.forward)
    assert actual == expected, f"TRL {trl.__version__} changed ChunkedDivergenceFunction.forward to {actual}"
    for name in ("TOKEN_CHUNK_SIZE", "VOCAB_CHUNK_SIZE"):
        assert isinstance(getattr(trl_internals.chunked_divergence, name, None), int), f"{name} moved"


def test_the_guarded_imports_found_trls_own_versions():
    assert trl_internals._use_triton.__module__ == "trl.kernels.chunked_logprob", (
        "trl.kernels.chunked_logprob._use_triton moved; the fallback (never Triton) is in use"
    )
    assert trl_internals.maybe_gather_lm_head_ctx.__module__.startswith("trl."), (
        "trl.trainer.utils.maybe_gather_lm_head_ctx moved; the fallback (no gathering, ZeRO-3 refused) is in use"
    )


@pytest.mark.parametrize(
    "trainer_class, config_class", [(GRPOTrainer, GRPOConfig), (RLOOTrainer, RLOOConfig)], ids=["grpo", "rloo"]
)
def test_each_trl_trainer_holds_the_state_the_method_reads(trainer_class, config_class, tiny_checkpoint, tmp_path):
    trainer = trainer_class(
        model=tiny_checkpoint,
        reward_funcs=lambda completions, **kwargs: [0.0] * len(completions),
        args=config_class(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none", num_generations=4),
        train_dataset=load_prompts("train", limit=4),
        processing_class=AutoTokenizer.from_pretrained(tiny_checkpoint),
    )
    expected = trl_internals.TRAINER_STATE + (trl_internals.GRPO_ONLY_STATE if trainer_class is GRPOTrainer else ())
    missing = [name for name in expected if not hasattr(trainer, name)]
    assert not missing, f"TRL {trl.__version__}'s {trainer_class.__name__} no longer has {missing}"
    assert isinstance(trainer._metrics["train"], defaultdict) and isinstance(trainer._logs["extra"], defaultdict)
    # `_tokenize_prompts` renders the null context like the prompts: its first output is one id list per prompt.
    ids = trainer._tokenize_prompts([[{"role": "user", "content": ""}]])[0]
    assert len(ids) == 1 and all(isinstance(i, int) for i in ids[0])
