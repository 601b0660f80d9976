"""The distillation term is reduced exactly as GRPO reduces its policy term, for every `loss_type`.

GRPO's own `_compute_loss` is run with the policy's per-token loss forced to a chosen tensor `X`: the importance
ratio is 1 (no old log-probabilities), the log-probabilities are 1, and the advantages are `-X` per token, so every
loss type's per-token loss is `X` (SAPO's soft gate is 1 at ratio 1 with both temperatures 2; VESPO's weight is 1
at ratio 1). Its scalar must then equal `reduce_like_grpo(X, ...)`, in training with gradient accumulation and
several steps per generation, and in evaluation.
"""

import re

import pytest
import torch
from transformers import AutoTokenizer
from trl import GRPOConfig, GRPOTrainer

from trl_diversity.data import load_prompts
from trl_diversity.trainer.normalization import GRPO_LOSS_TYPES, reduce_like_grpo


def grpo_loss_types() -> set[str]:
    """The loss types GRPOConfig's help lists (TRL has no machine-readable list)."""
    help_text = GRPOConfig.__dataclass_fields__["loss_type"].metadata["help"]
    supported = help_text.split("Supported values are", 1)[1].split(".", 1)[0]
    return set(re.findall(r"'(\w+)'", supported))


def test_every_grpo_loss_type_has_a_reduction():
    missing = grpo_loss_types() - set(GRPO_LOSS_TYPES)
    assert not missing, (
        f"TRL's GRPO has loss types {sorted(missing)} that trl_diversity/trainer/normalization.py does not reduce: "
        "mirror their reduction from GRPOTrainer._compute_loss and add them to GRPO_LOSS_TYPES."
    )


@pytest.fixture(scope="module")
def grpo(tiny_checkpoint, tmp_path_factory):
    args = GRPOConfig(
        output_dir=str(tmp_path_factory.mktemp("grpo")),
        use_cpu=True,
        bf16=False,
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=6,
        report_to="none",
        sapo_temperature_pos=2.0,
        sapo_temperature_neg=2.0,
    )
    return GRPOTrainer(
        model=tiny_checkpoint,
        reward_funcs=lambda completions, **kwargs: [0.0] * len(completions),
        args=args,
        train_dataset=load_prompts("train", limit=4),
        processing_class=AutoTokenizer.from_pretrained(tiny_checkpoint),
    )


@pytest.mark.parametrize("loss_type", GRPO_LOSS_TYPES)
@pytest.mark.parametrize("training, accumulation, steps_per_generation", [(True, 3, 2), (True, 1, 1), (False, 1, 1)])
def test_distillation_is_reduced_like_grpos_policy_term(
    grpo, monkeypatch, loss_type, training, accumulation, steps_per_generation
):
    generator = torch.Generator().manual_seed(0)
    batch, length = 4, 6
    per_token = torch.rand(batch, length, generator=generator) + 0.1
    lengths = torch.tensor([6, 1, 4, 3])
    completion_mask = (torch.arange(length) < lengths.unsqueeze(1)).long()
    num_items_in_batch = torch.tensor(float(completion_mask.sum() * 5))  # a generation batch holds more than this

    monkeypatch.setattr(grpo, "loss_type", loss_type)
    monkeypatch.setattr(grpo, "epsilon_high", 1.0)  # CISPO caps the ratio at epsilon_high: no cap at ratio 1
    monkeypatch.setattr(grpo, "importance_sampling_level", "sequence" if loss_type == "luspo" else "token")
    monkeypatch.setattr(grpo, "current_gradient_accumulation_steps", accumulation, raising=False)
    monkeypatch.setattr(grpo.args, "steps_per_generation", steps_per_generation)
    ones = torch.ones(batch, length, requires_grad=True)
    monkeypatch.setattr(
        grpo, "_get_per_token_logps_and_entropies", lambda *a, **k: (ones, torch.zeros(batch, length), None)
    )
    inputs = {
        "prompt_ids": torch.ones(batch, 2, dtype=torch.long),
        "prompt_mask": torch.ones(batch, 2, dtype=torch.long),
        "completion_ids": torch.ones(batch, length, dtype=torch.long),
        "completion_mask": completion_mask,
        "advantages": -per_token,
        "num_items_in_batch": num_items_in_batch,
    }
    grpo.model.train(training)
    expected = grpo._compute_loss(grpo.model, inputs)
    actual = reduce_like_grpo(
        per_token,
        completion_mask,
        loss_type,
        accumulation_steps=accumulation,
        max_completion_length=grpo.max_completion_length,
        num_items_in_batch=num_items_in_batch,
        num_processes=1,
        steps_per_generation=steps_per_generation,
        training=training,
    )
    torch.testing.assert_close(actual, expected.detach(), msg=f"{loss_type}: GRPO reduces differently")
