"""Drop-in: with the method off the trainer is GRPO exactly; with it on, everything generic keeps working."""

import logging

import pytest
import torch
from datasets import IterableDataset
from peft import LoraConfig, get_peft_model
from tiny import build_model
from tiny_training import TINY_RUN, always_none, assert_same_run, brevity, logged, make_args, reward_model
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import GRPOConfig, GRPOTrainer

from trl_diversity import DiversityCFGConfig, DiversityCFGTrainer
from trl_diversity.data import load_prompts


def build_pair(tiny_checkpoint, tmp_path, reward_funcs_factory, train=False, **overrides):
    """The same GRPO job twice: with `GRPOTrainer`, and with ours with both coefficients at 0.

    With `train`, each is trained right after it is built: the two then start from the same random state (building
    seeds it), and their logs can be compared value by value."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint)
    settings = {**TINY_RUN, "max_steps": 2, **overrides}
    trainers = []
    for name, trainer_class, config_class, extra in (
        ("grpo", GRPOTrainer, GRPOConfig, {}),
        ("ours", DiversityCFGTrainer, DiversityCFGConfig, {"distill_coef": 0.0, "diversity_coef": 0.0}),
    ):
        reward_funcs, processing_classes = reward_funcs_factory(tokenizer)
        trainers.append(
            trainer_class(
                model=tiny_checkpoint,
                args=config_class(output_dir=str(tmp_path / name), **settings, **extra),
                train_dataset=load_prompts("train", conversational=True, limit=16),
                processing_class=tokenizer,
                reward_funcs=reward_funcs,
                reward_processing_classes=processing_classes,
            )
        )
        if train:
            trainers[-1].train()
    return trainers


def test_with_the_method_off_it_is_grpo_exactly(tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setattr("trl_diversity.rewards.embedder.load_embedder", pytest.fail)  # no embedder may load
    models = []

    def rewards(tokenizer):  # a function, and a reward model with its processing class
        models.append(reward_model(tokenizer))
        return [brevity, models[-1]], [None, tokenizer]

    grpo, ours = build_pair(tiny_checkpoint, tmp_path, rewards, train=True, reward_weights=[1.0, 0.5])
    # What a GRPO user reads from the trainer is what they passed, as GRPO holds it: no extra entry.
    assert ours.reward_funcs[0] is brevity is grpo.reward_funcs[0]
    assert (ours.reward_funcs[1] is models[1]) == (grpo.reward_funcs[1] is models[0])
    assert ours.reward_func_names == grpo.reward_func_names and len(ours.reward_func_names) == 2
    assert ours.reward_weights.tolist() == grpo.reward_weights.tolist() == [1.0, 0.5]
    assert ours.reward_processing_classes == grpo.reward_processing_classes == [None, grpo.processing_class]
    # Nothing of the method exists.
    assert ours.teacher is None and ours.diversity_reward is None and ours.embedder is None

    assert_same_run(grpo, ours, "GRPO")


def test_the_all_none_warning_is_grpos_with_the_method_off_and_on(tiny_checkpoint, tmp_path, caplog):
    grpo, ours = build_pair(tiny_checkpoint, tmp_path, lambda tokenizer: ([always_none], None), max_steps=1)
    method_on = DiversityCFGTrainer(
        model=tiny_checkpoint,
        args=make_args(tmp_path / "on", max_steps=1, diversity_reward="lexical"),
        train_dataset=load_prompts("train", conversational=True, limit=8),
        processing_class=AutoTokenizer.from_pretrained(tiny_checkpoint),
        reward_funcs=always_none,
    )
    for trainer in (grpo, ours, method_on):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="trl.trainer.grpo_trainer"):
            trainer.train()
        assert "All reward functions returned None" in caplog.text, type(trainer).__name__
    assert method_on.reward_funcs == [always_none] and method_on.reward_func_names == ["always_none"]
    assert logged(method_on, "diversity/pairwise")  # the method still ran


def test_distillation_alone_keeps_logging_diversity(tiny_checkpoint, tmp_path):
    trainer = DiversityCFGTrainer(
        model=tiny_checkpoint,
        args=make_args(tmp_path, max_steps=1, diversity_coef=0.0),
        train_dataset=load_prompts("train", conversational=True, limit=8),
        processing_class=AutoTokenizer.from_pretrained(tiny_checkpoint),
    )
    trainer.train()
    assert trainer.reward_funcs == [] and trainer.reward_func_names == [] and trainer.reward_weights.numel() == 0
    assert logged(trainer, "diversity/pairwise") and logged(trainer, "distill/divergence")
    assert logged(trainer, "diversity/advantage_abs") == [0.0]
    assert logged(trainer, "reward") == [0.0]  # no quality reward: GRPO's reward is 0, not NaN


def method_on_trainer(checkpoint, tmp_path, model=None, peft_config=None, train_dataset=None, **overrides):
    return DiversityCFGTrainer(
        model=model if model is not None else checkpoint,
        args=make_args(tmp_path, max_steps=2, **overrides),
        train_dataset=train_dataset if train_dataset is not None else load_prompts("train", limit=16),
        eval_dataset=load_prompts("eval", limit=4),
        processing_class=AutoTokenizer.from_pretrained(checkpoint),
        peft_config=peft_config,
    )


def test_evaluation_before_and_after_training_with_the_method_on(tiny_checkpoint, tmp_path):
    trainer = method_on_trainer(tiny_checkpoint, tmp_path, per_device_eval_batch_size=8)
    before = trainer.evaluate(eval_dataset=load_prompts("eval", limit=4))  # no training step has run yet
    for key in ("eval_loss", "eval_distill/divergence", "eval_diversity/pairwise"):
        assert key in before and before[key] == before[key], key  # present and not NaN
    trainer.train()
    after = trainer.evaluate()
    assert after["eval_distill/divergence"] != before["eval_distill/divergence"]


def test_a_user_peft_model_keeps_its_initial_adapter_as_ref(tiny_checkpoint, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint)
    lora = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM", init_lora_weights=False
    )
    model = get_peft_model(build_model(len(tokenizer)), lora)
    trainer = method_on_trainer(tiny_checkpoint, tmp_path, model=model)
    assert set(trainer.model.peft_config) == {"default", "ref"}  # GRPO's name for the frozen initial adapter
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    for name, param in trainer.model.named_parameters():
        if "lora_" not in name:
            assert torch.equal(param, before[name]), f"base weight {name} changed"
        elif ".ref." in name:
            assert torch.equal(param, before[name]), f"the teacher's adapter {name} changed"
        else:
            assert not torch.equal(param, before[name]), f"adapter weight {name} did not change"


def test_iterable_datasets_train_and_checkpoints_save_with_the_method_on(tiny_checkpoint, tmp_path):
    def rows():
        yield from load_prompts("train", limit=16)

    stream = IterableDataset.from_generator(rows)
    trainer = method_on_trainer(
        tiny_checkpoint,
        tmp_path,
        train_dataset=stream,
        save_strategy="steps",
        save_steps=2,
        diversity_reward="partition",
    )
    trainer.train()
    checkpoint = tmp_path / "out" / "checkpoint-2"
    assert (checkpoint / "trainer_state.json").is_file()
    reloaded = AutoModelForCausalLM.from_pretrained(checkpoint)
    assert torch.equal(reloaded.lm_head.weight, trainer.model.lm_head.weight)


def test_evaluation_with_one_sample_per_prompt_logs_no_diversity(tiny_checkpoint, tmp_path):
    trainer = method_on_trainer(tiny_checkpoint, tmp_path, num_generations_eval=1, log_completions=True)
    metrics = trainer.evaluate()  # writes GRPO's completions table: its columns must have equal lengths
    assert "eval_distill/divergence" in metrics and not any("diversity" in key for key in metrics)
    assert len(trainer._logs["extra"]["diversity_reward"]) == len(trainer._logs["prompt"])
    assert (tmp_path / "out" / "completions").is_dir()
