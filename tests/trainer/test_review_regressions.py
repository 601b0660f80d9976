"""Errors a review found in configurations the trainers accepted. Each test failed before its fix.

1. an in-memory policy with `beta != 0` got the checkpoint on disk as its CFG teacher;
2. GPT-2 (absolute positions) with left padding: the student counted positions from the first pad;
3. `as_reward_function(num_generations=k')` accepted a `k'` dividing the trainer's `k`;
4. RLOO with no quality reward and `normalize_advantages=True` normalised `-beta * KL` by its own std;
5. the completions table's `advantage` column left out the diversity term;
6. an `"initial"` diversity target measured at about 0 drove the coefficient down silently;
7. the model card cited GRPO's paper, DeepSeekMath, as the method's.
"""

import logging

import pytest
import torch
from tiny import build
from tiny_training import logged, make_trainer, rloo_trainer
from transformers import AutoModelForCausalLM

from trl_diversity.data import load_prompts
from trl_diversity.rewards import as_reward_function
from trl_diversity.trainer.diversity_controller import DiversityCoefController

IDENTITY = dict(guidance_scale=1.0, learning_rate=0.0, max_steps=1, disable_dropout=True)


def changed_in_memory(checkpoint):
    """A policy that differs from its checkpoint on disk (as after merging an SFT adapter)."""
    model = AutoModelForCausalLM.from_pretrained(checkpoint)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return model


@pytest.mark.parametrize("algorithm", ["grpo", "rloo"])
def test_an_in_memory_policy_with_a_kl_penalty_is_its_own_teacher(tiny_checkpoint, tmp_path, algorithm):
    model = changed_in_memory(tiny_checkpoint)
    if algorithm == "grpo":
        trainer = make_trainer(tiny_checkpoint, tmp_path, model=model, beta=0.04, **IDENTITY)
    else:  # RLOO's default beta = 0.05
        trainer = rloo_trainer(tiny_checkpoint, tmp_path, model=model, **IDENTITY)
    assert trainer.ref_model is not None
    trainer.train()
    (divergence,) = logged(trainer, "distill/divergence")
    assert divergence < 1e-5


def test_absolute_positions_with_left_padding_distill_to_zero_at_scale_one(tmp_path):
    model, tokenizer = build("gpt2")
    folder = tmp_path / "gpt2"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    trainer = make_trainer(str(folder), tmp_path, **IDENTITY)  # the bundled prompts differ in length
    trainer.train()
    (divergence,) = logged(trainer, "distill/divergence")
    assert divergence < 1e-5


def _length(completions, **kwargs):
    return [float(len(str(c))) for c in completions]


def _distinct(prompt, completions, **kwargs):
    return [float(len(set(map(str, completions)))) for _ in completions]


def test_a_group_reward_wrapped_for_fewer_generations_than_the_trainer_is_refused(tiny_checkpoint, tmp_path):
    wrapped = as_reward_function(_distinct, num_generations=2)  # the trainer's k is 4
    trainer = make_trainer(tiny_checkpoint, tmp_path, reward_funcs=[wrapped], max_steps=1)
    with pytest.raises(ValueError, match=r"num_generations=2.*num_generations=4"):
        trainer.train()


def test_rloo_normalising_a_kl_only_reward_is_refused_before_any_model_loads(tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setattr("transformers.AutoModelForCausalLM.from_pretrained", pytest.fail)
    with pytest.raises(ValueError, match="normalize_advantages"):
        rloo_trainer(tiny_checkpoint, tmp_path, normalize_advantages=True)


@pytest.mark.parametrize("algorithm", ["grpo", "rloo"])
def test_the_completions_tables_advantages_are_the_trained_ones(tiny_checkpoint, tmp_path, monkeypatch, algorithm):
    build_trainer = make_trainer if algorithm == "grpo" else rloo_trainer
    trainer = build_trainer(
        tiny_checkpoint,
        tmp_path,
        diversity_coef=10.0,
        max_steps=1,
        diversity_reward="toy_group_rewards:rank_by_length",
    )
    trained = []
    original = type(trainer)._generate_and_score_completions

    def recording(self, inputs):
        output = original(self, inputs)
        trained.extend(output["advantages"].tolist())
        return output

    monkeypatch.setattr(type(trainer), "_generate_and_score_completions", recording)
    trainer.train()
    table = list(trainer._logs["advantages"])
    assert trained and any(abs(a) > 1e-3 for a in trained), trained
    assert table[-len(trained) :] == pytest.approx(trained, abs=1e-5)


def test_an_initial_target_measured_at_zero_warns(caplog):
    controller = DiversityCoefController("initial", 10.0, warmup_steps=2)
    with caplog.at_level(logging.WARNING, logger="trl_diversity"):
        controller.update(0.0)
        controller.update(1e-9)
    assert any(r.levelno == logging.WARNING and "initial" in r.getMessage() for r in caplog.records)


def test_load_prompts_bundled_are_of_different_lengths():
    """The identity tests above rely on left padding: the bundled prompts must differ in length."""
    prompts = load_prompts("train", limit=16)["prompt"]
    assert len({len(p) for p in prompts}) > 1


@pytest.mark.parametrize("algorithm", ["grpo", "rloo"])
def test_the_model_card_cites_the_methods_paper(tiny_checkpoint, tmp_path, algorithm):
    build_trainer = make_trainer if algorithm == "grpo" else rloo_trainer
    trainer = build_trainer(tiny_checkpoint, tmp_path, diversity_reward="lexical")
    trainer.create_model_card()
    card = (tmp_path / "out" / "README.md").read_text()
    assert "Diversity-Rewarded CFG Distillation" in card and "2410.06084" in card and "cideron2025diversity" in card
    assert "DeepSeekMath" not in card
