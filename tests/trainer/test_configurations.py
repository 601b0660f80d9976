"""Configurations the trainer accepts must be right, or be refused before any model loads.

Each test names the review's item it covers.
"""

import warnings

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig
from tiny_training import make_args, make_trainer
from transformers import AutoModelForCausalLM

from trl_diversity import DiversityCFGTrainer
from trl_diversity.data import load_prompts
from trl_diversity.rewards import EmbeddingDiversity, LexicalDiversity, PartitionDiversity, group_advantages
from trl_diversity.trainer.divergence import _weight_and_bias

GROUP = ["The capital of France is Paris.", "Paris is the capital of France.", "France has Paris as its capital city."]


# 1. An empty completion must not earn the group's highest diversity reward.
@pytest.mark.parametrize("measure", ["lexical", "partition", "embedding"])
@pytest.mark.parametrize("blank", ["", "  \n\t"])
def test_a_blank_completion_earns_the_lowest_diversity_reward_and_raises_no_other(measure, blank):
    reward = {"lexical": LexicalDiversity, "partition": PartitionDiversity, "embedding": EmbeddingDiversity}[measure]()
    with_blank = reward.rewards([*GROUP, blank])
    assert with_blank[-1] == 0.0 and min(with_blank) == 0.0
    # The others are scored against the three real answers only, their pair with the blank counting 0.
    alone = reward.rewards(GROUP)
    for mixed, own in zip(with_blank[:3], alone):
        assert mixed == pytest.approx(own * 2 / 3, abs=1e-6)


def test_evaluation_scores_a_blank_completion_as_training_does():
    from trl_diversity.toolkit.evaluation import per_prompt_metrics

    reward = EmbeddingDiversity()
    records = {"Name the capital of France.": [{"completion": text} for text in [*GROUP, ""]]}
    metrics = per_prompt_metrics(records, reward.embedder)
    assert metrics["pairwise_diversity"][0] == pytest.approx(sum(reward.rewards([*GROUP, ""])) / 4, abs=1e-6)


# 2. sync_ref_model must not move the CFG teacher.
def test_sync_ref_model_leaves_the_cfg_teacher_where_it_started(tiny_checkpoint, tmp_path):
    trainer = make_trainer(
        tiny_checkpoint, tmp_path, beta=0.1, sync_ref_model=True, ref_model_sync_steps=1, ref_model_mixup_alpha=0.5
    )
    assert trainer.teacher is not trainer.ref_model
    trainer.train()
    initial = AutoModelForCausalLM.from_pretrained(tiny_checkpoint)
    reference = trainer.accelerator.unwrap_model(trainer.ref_model)
    assert any(not torch.equal(p, q) for p, q in zip(reference.parameters(), initial.parameters()))  # it synced
    teacher = trainer.accelerator.unwrap_model(trainer.teacher)
    for (name, p), q in zip(teacher.named_parameters(), initial.parameters()):
        assert torch.equal(p, q), f"teacher parameter {name} moved"


# 5. LoRA with a trainable LM head: the teacher projects with the initial head, not the moving one.
def test_lora_with_a_trainable_head_keeps_the_teachers_head_frozen(tiny_checkpoint, tmp_path):
    lora = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], modules_to_save=["lm_head"], task_type="CAUSAL_LM"
    )
    trainer = make_trainer(tiny_checkpoint, tmp_path, peft_config=lora, learning_rate=5e-2)
    initial = AutoModelForCausalLM.from_pretrained(tiny_checkpoint).lm_head.weight
    trainer.train()
    student_head, _ = _weight_and_bias(trainer._student_head(trainer.model))
    assert not torch.equal(student_head, initial)  # the head did train
    teacher_head, _ = _weight_and_bias(trainer.cfg_teacher.head())
    assert torch.equal(teacher_head, initial)


# 11. The adapter-disabled teacher runs without dropout.
def test_the_lora_teacher_runs_in_eval_mode(tiny_checkpoint, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint, attention_dropout=0.5)
    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.5, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    trainer = make_trainer(tiny_checkpoint, tmp_path, model=model, peft_config=lora, disable_dropout=False)
    trainer.model.train()
    batch = [trainer.train_dataset[i // 4] for i in range(8)]
    output = trainer._generate_and_score_completions(batch)
    again = trainer.cfg_teacher.hidden_states(output, conversational=True)
    torch.testing.assert_close(output["teacher_hidden_states"], again, rtol=0, atol=0)
    assert trainer.model.training  # and the policy is back in train mode


# 4. Environments with distillation: refused before any model loads.
def test_an_environment_with_distillation_is_refused_before_loading(tmp_path):
    with pytest.raises(ValueError, match="environment_factory.*distill_coef=0"):
        DiversityCFGTrainer(
            model=str(tmp_path / "never-loaded"),
            args=make_args(tmp_path),
            train_dataset=load_prompts("train", limit=4),
            environment_factory=lambda: None,
        )


# 8. Image datasets with distillation: the teacher would never see the images.
@pytest.mark.parametrize("column", ["image", "images"])
def test_an_image_dataset_with_distillation_is_refused_naming_the_field(tmp_path, column):
    dataset = Dataset.from_dict({"prompt": ["Describe it."], column: [None]})
    with pytest.raises(ValueError, match=f"`{column}`.*distill_coef=0"):
        DiversityCFGTrainer(model=str(tmp_path / "never-loaded"), args=make_args(tmp_path), train_dataset=dataset)


# 9. Fields that the chosen settings ignore warn once, when the config is built.
@pytest.mark.parametrize(
    "fields, name",
    [
        (dict(distill_coef=0.0, teacher_model="some/teacher"), "teacher_model"),
        (dict(distill_coef=0.0, guidance_scale=2.0), "guidance_scale"),
        (dict(distill_coef=0.0, unconditional_prompt="Write."), "unconditional_prompt"),
        (dict(distill_divergence="reverse_kl", distill_jsd_beta=0.3), "distill_jsd_beta"),
    ],
)
def test_an_ignored_field_warns_naming_it(tmp_path, fields, name):
    with pytest.warns(UserWarning, match=f"{name}.*ignored"):
        make_args(tmp_path, **fields)


def test_the_defaults_warn_about_nothing(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make_args(tmp_path)
        make_args(tmp_path, distill_coef=0.0)
        make_args(tmp_path, distill_divergence="jsd", distill_jsd_beta=0.3)


def test_a_teacher_in_the_local_hub_cache_is_accepted_offline(tmp_path, monkeypatch):
    from trl_diversity.trainer.teacher import teacher_model_is_missing

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache = tmp_path / "hub"
    snapshot = cache / "models--some-org--teacher" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (cache / "models--some-org--teacher" / "refs").mkdir()
    (cache / "models--some-org--teacher" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    assert not teacher_model_is_missing("some-org/teacher")
    assert teacher_model_is_missing("some-org/absent")
    assert teacher_model_is_missing(str(tmp_path / "no-such-folder"))
    assert not teacher_model_is_missing(str(tmp_path))


# 10. k = 2 with a pairwise measure: the leave-one-out baseline is empty, so the other groups' mean serves.
def test_with_two_samples_a_pairwise_advantage_has_the_other_groups_mean_as_baseline():
    rewards = torch.tensor([0.2, 0.2, 0.6, 0.6, 0.7, 0.7])  # three groups of 2: r_1 = r_2 = s(y_1, y_2)
    advantages = group_advantages(rewards, 2, pairwise=True)
    torch.testing.assert_close(advantages, torch.tensor([-0.45, -0.45, 0.15, 0.15, 0.3, 0.3]))
    assert (advantages < 0).any()  # not every diversity advantage is non-negative any more
    # One group alone has no other group to compare with: no baseline, and the config warns about it.
    torch.testing.assert_close(group_advantages(torch.tensor([0.4, 0.4]), 2, pairwise=True), torch.tensor([0.4, 0.4]))


def test_two_samples_per_prompt_with_a_pairwise_measure_warn(tmp_path):
    with pytest.warns(UserWarning, match="num_generations=2"):
        make_args(tmp_path, num_generations=2, per_device_train_batch_size=4)


# 12. Rows that no quality reward can score still get their diversity advantage (documented in the README).
def test_an_unscorable_row_keeps_its_diversity_advantage(tiny_checkpoint, tmp_path):
    def unscorable(completions, **kwargs):
        return [None] * len(completions)

    trainer = make_trainer(
        tiny_checkpoint, tmp_path, diversity_reward="lexical", distill_coef=0.0, reward_funcs=[unscorable]
    )
    trainer.model.train()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # GRPO warns that every reward function returned None
        output = trainer._generate_and_score_completions([trainer.train_dataset[i // 4] for i in range(8)])
    rewards = trainer._latest_diversity_rewards
    expected = trainer.args.diversity_coef * group_advantages(rewards, 4, pairwise=True)
    torch.testing.assert_close(output["advantages"], expected)


# GRPO's batching options: several passes over a generation, a generation split over steps, gradient accumulation.
@pytest.mark.parametrize(
    "settings",
    [dict(num_iterations=2), dict(steps_per_generation=2), dict(gradient_accumulation_steps=2)],
    ids=["num_iterations=2", "steps_per_generation=2", "gradient_accumulation_steps=2"],
)
def test_the_method_trains_under_grpos_batching_options(tiny_checkpoint, tmp_path, settings):
    trainer = make_trainer(
        tiny_checkpoint, tmp_path, max_steps=2, per_device_train_batch_size=4, diversity_reward="lexical", **settings
    )
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    divergences = [entry["distill/divergence"] for entry in trainer.state.log_history if "distill/divergence" in entry]
    assert len(losses) == len(divergences) == 2
    assert all(torch.isfinite(torch.tensor(losses))) and all(d > 0 for d in divergences)
    assert any(not torch.equal(p, before[name]) for name, p in trainer.model.named_parameters())
