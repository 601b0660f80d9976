"""The method on TRL's RLOO: `DiversityCFGRLOOTrainer` is `RLOOTrainer` with the method off, and with it on keeps
RLOO's own rules (KL in the reward, its loss reduction) and everything generic working."""

import dataclasses
import logging

import pytest
import torch
from datasets import IterableDataset
from peft import LoraConfig, get_peft_model
from tiny import build_model
from tiny_training import (
    RLOO_RUN,
    always_none,
    assert_same_run,
    assert_same_weights,
    brevity,
    final_weights,
    logged,
    reward_model,
    rloo_trainer,
    run_interrupted_and_resumed,
    tiny_train_argv,
)
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import RLOOConfig, RLOOTrainer

from trl_diversity import DiversityCFGConfig, DiversityCFGRLOOConfig, DiversityCFGRLOOTrainer
from trl_diversity.data import load_prompts
from trl_diversity.rewards import group_advantages
from trl_diversity.trainer.diversity_cfg_config import DiversityCFGFields
from trl_diversity.trainer.normalization import reduce_like_rloo


def test_the_rloo_classes_subclass_trls_and_share_the_methods_fields():
    assert issubclass(DiversityCFGRLOOTrainer, RLOOTrainer) and issubclass(DiversityCFGRLOOConfig, RLOOConfig)
    ours = {f.name: f for f in dataclasses.fields(DiversityCFGFields)}
    for config in (DiversityCFGConfig, DiversityCFGRLOOConfig):
        fields = {f.name: f for f in dataclasses.fields(config)}
        for name, field in ours.items():
            assert fields[name].metadata["help"] == field.metadata["help"] and fields[name].default == field.default
    # RLOO's own defaults are kept: the KL penalty in the reward, two samples per prompt.
    defaults = DiversityCFGRLOOConfig("unused", use_cpu=True, diversity_coef=0.0)
    assert defaults.beta == RLOOConfig.__dataclass_fields__["beta"].default == 0.05
    assert defaults.num_generations == RLOOConfig.__dataclass_fields__["num_generations"].default == 2


def test_with_the_method_off_it_is_rloo_exactly(tiny_checkpoint, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr("trl_diversity.rewards.embedder.load_embedder", pytest.fail)  # no embedder may load
    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint)
    trainers, warnings_seen = [], []
    for name, trainer_class, config_class, extra in (
        ("rloo", RLOOTrainer, RLOOConfig, {}),
        ("ours", DiversityCFGRLOOTrainer, DiversityCFGRLOOConfig, {"distill_coef": 0.0, "diversity_coef": 0.0}),
    ):
        model = reward_model(tokenizer)
        trainer = trainer_class(
            model=tiny_checkpoint,
            reward_funcs=[brevity, model, always_none],
            args=config_class(
                output_dir=str(tmp_path / name),
                **{**RLOO_RUN, "max_steps": 2},
                reward_weights=[1.0, 0.5, 1.0],
                **extra,
            ),
            train_dataset=load_prompts("train", conversational=True, limit=16),
            processing_class=tokenizer,
            reward_processing_classes=[None, tokenizer, None],
        )
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="trl.trainer.rloo_trainer"):
            trainer.train()
        warnings_seen.append(sorted({record.getMessage() for record in caplog.records}))
        trainers.append(trainer)
    rloo, ours = trainers
    assert ours.reward_funcs[0] is brevity is rloo.reward_funcs[0] and len(ours.reward_funcs) == 3
    assert ours.reward_func_names == rloo.reward_func_names
    assert ours.reward_weights.tolist() == rloo.reward_weights.tolist() == [1.0, 0.5, 1.0]
    assert ours.reward_processing_classes == rloo.reward_processing_classes
    assert ours.teacher is None and ours.diversity_reward is None and ours.embedder is None
    assert warnings_seen[0] == warnings_seen[1]
    assert_same_run(rloo, ours, "RLOO")


def test_the_all_none_warning_is_rloos_with_the_method_off_and_on(tiny_checkpoint, tmp_path, caplog):
    for name, extra in (
        ("off", {"distill_coef": 0.0, "diversity_coef": 0.0}),
        ("on", {"diversity_reward": "lexical"}),
    ):
        trainer = rloo_trainer(tiny_checkpoint, tmp_path / name, reward_funcs=[always_none], max_steps=1, **extra)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="trl.trainer.rloo_trainer"):
            trainer.train()
        assert "All reward functions returned None" in caplog.text, name


def test_without_a_quality_reward_rloos_kl_penalty_still_shapes_the_advantages(tiny_checkpoint, tmp_path):
    trainer = rloo_trainer(tiny_checkpoint, tmp_path, beta=0.5, diversity_reward="lexical", distill_coef=0.0)
    assert trainer.reward_funcs == [] and trainer.reward_weights.numel() == 0  # the user's lists, as passed
    with torch.no_grad():  # move the policy away from its reference, so that the KL is not 0
        for parameter in trainer.model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    trainer.model.train()
    output = trainer._generate_and_score_completions([trainer.train_dataset[i // 4] for i in range(8)])
    diversity = trainer.args.diversity_coef * group_advantages(trainer._latest_diversity_rewards, 4, pairwise=True)
    rloo_part = (output["advantages"] - diversity).view(-1, 4)
    assert logged_kl(trainer) > 0
    assert rloo_part.abs().sum() > 0, "the KL penalty was dropped (rows read as unscorable)"
    torch.testing.assert_close(rloo_part.sum(-1), torch.zeros(2), atol=1e-5, rtol=0)  # leave-one-out sums to 0
    assert trainer._metrics["train"]["reward"][-1] == 0.0


def logged_kl(trainer):
    return trainer._metrics["train"]["kl"][-1]


def test_the_distillation_is_weighted_per_token_as_rloos_policy_term(tiny_checkpoint, tmp_path, monkeypatch):
    """RLOO's gradient on each completion token's log-probability is `-A_i m_it / B` (a sequence sum, then a mean
    over sequences); the distillation's on each token's divergence must be `m_it / B` to weigh tokens alike."""
    trainer = rloo_trainer(tiny_checkpoint, tmp_path, distill_coef=0.0, diversity_reward="lexical", beta=0.0)
    batch, length = 4, 6
    mask = (torch.arange(length) < torch.tensor([6, 1, 4, 3]).unsqueeze(1)).long()
    per_token_logps = torch.rand(batch, length, requires_grad=True)
    entropies = torch.zeros(batch, length)
    monkeypatch.setattr(
        trainer, "_get_per_token_logps_and_entropies", lambda *a, **k: (per_token_logps, entropies, None)
    )
    inputs = {
        "prompt_ids": torch.ones(batch, 2, dtype=torch.long),
        "prompt_mask": torch.ones(batch, 2, dtype=torch.long),
        "completion_ids": torch.ones(batch, length, dtype=torch.long),
        "completion_mask": mask,
        "advantages": -torch.ones(batch),
        "old_logps": (per_token_logps * mask).sum(1).detach(),
    }
    trainer.model.train()
    RLOOTrainer._compute_loss(trainer, trainer.model, inputs).backward()
    divergence = torch.rand(batch, length, requires_grad=True)
    reduce_like_rloo(divergence, mask).backward()
    torch.testing.assert_close(divergence.grad, per_token_logps.grad)


def test_sync_ref_model_leaves_the_rloo_teacher_frozen(tiny_checkpoint, tmp_path):
    trainer = rloo_trainer(
        tiny_checkpoint, tmp_path, sync_ref_model=True, ref_model_sync_steps=1, ref_model_mixup_alpha=0.5
    )
    assert trainer.ref_model is not None and trainer.teacher is not trainer.ref_model
    trainer.train()
    initial = AutoModelForCausalLM.from_pretrained(tiny_checkpoint)
    teacher = trainer.accelerator.unwrap_model(trainer.teacher)
    for (name, p), q in zip(teacher.named_parameters(), initial.parameters()):
        assert torch.equal(p, q), f"teacher parameter {name} moved"


def test_by_default_the_teacher_is_rloos_frozen_reference(tiny_checkpoint, tmp_path):
    trainer = rloo_trainer(tiny_checkpoint, tmp_path, max_steps=2)
    assert trainer.teacher is trainer.ref_model is not None  # beta = 0.05: one frozen copy serves both
    trainer.train()
    assert len(logged(trainer, "distill/divergence")) == len(logged(trainer, "kl")) == 2


def test_evaluation_before_and_after_training(tiny_checkpoint, tmp_path):
    trainer = rloo_trainer(tiny_checkpoint, tmp_path, max_steps=2, per_device_eval_batch_size=8)
    before = trainer.evaluate()  # no training step has run yet
    for key in ("eval_loss", "eval_distill/divergence", "eval_diversity/pairwise", "eval_kl"):
        assert key in before and before[key] == before[key], key  # present and not NaN
    trainer.train()
    after = trainer.evaluate()
    assert after["eval_distill/divergence"] != before["eval_distill/divergence"]


def test_an_interrupted_run_resumes_to_the_uninterrupted_weights(tiny_checkpoint, tmp_path):
    settings = dict(max_steps=4, save_strategy="steps", save_steps=2, full_determinism=True)
    uninterrupted, interrupted, resumed = run_interrupted_and_resumed(
        lambda folder, **kwargs: rloo_trainer(tiny_checkpoint, folder, **kwargs), tmp_path, settings
    )
    expected, moved = final_weights(uninterrupted), final_weights(interrupted)
    assert_same_weights(resumed, expected)
    assert any(not torch.equal(moved[name], expected[name]) for name in expected)  # steps 3-4 did change weights


def test_peft_config_and_a_user_peft_model_both_train_with_a_frozen_teacher(tiny_checkpoint, tmp_path):
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    by_config = rloo_trainer(tiny_checkpoint, tmp_path / "config", peft_config=lora, max_steps=2)
    assert by_config.teacher is None  # the base model with the adapter off
    by_config.train()
    assert len(logged(by_config, "distill/divergence")) == 2

    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint)
    lora = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM", init_lora_weights=False
    )
    model = get_peft_model(build_model(len(tokenizer)), lora)
    by_model = rloo_trainer(tiny_checkpoint, tmp_path / "model", model=model, max_steps=2)
    assert set(by_model.model.peft_config) == {"default", "ref"} and by_model.cfg_teacher.adapter == "ref"
    before = {n: p.detach().clone() for n, p in by_model.model.named_parameters()}
    by_model.train()
    for name, param in by_model.model.named_parameters():
        if "lora_" not in name or ".ref." in name:
            assert torch.equal(param, before[name]), f"{name} changed"


def test_an_iterable_dataset_trains(tiny_checkpoint, tmp_path):
    def rows():
        yield from load_prompts("train", limit=16)

    trainer = rloo_trainer(
        tiny_checkpoint,
        tmp_path,
        train_dataset=IterableDataset.from_generator(rows),
        max_steps=2,
        diversity_reward="partition",
    )
    trainer.train()
    assert len(logged(trainer, "diversity/reward/mean")) == 2


# The command line: `--algorithm rloo` (or a recipe's `algorithm: rloo`), and the other algorithm's options refused.


def test_train_with_algorithm_rloo_trains_the_default_job_shape_with_rloo(tiny_checkpoint, tmp_path, monkeypatch):
    from trl_diversity import cli

    built = []
    monkeypatch.setattr(DiversityCFGRLOOTrainer, "train", lambda self, **kwargs: built.append(self) or orig(self))
    orig = RLOOTrainer.train
    out = tmp_path / "run"
    cli.main(["train", "--algorithm", "rloo", *tiny_train_argv(tiny_checkpoint, out)])
    assert len(built) == 1 and isinstance(built[0], DiversityCFGRLOOTrainer)
    assert (out / "adapter_config.json").is_file()  # the default job's LoRA adapter
    assert "kl" in built[0].state.log_history[0] and "distill/divergence" in built[0].state.log_history[0]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--algorithm", "rloo", "--loss_type", "dapo"], "--loss_type is a GRPO option"),
        (["--algorithm", "rloo", "--scale_rewards", "group"], "--scale_rewards is a GRPO option"),
        (["--normalize_advantages", "true"], "--normalize_advantages is an RLOO option"),
        (["--algorithm", "ppo"], "invalid choice 'ppo'"),
    ],
)
def test_the_other_algorithms_options_are_refused_in_one_line(flags, message, tmp_path):
    from trl_diversity.cli.train import parse
    from trl_diversity.errors import UserError

    with pytest.raises(UserError, match=message):
        parse([*flags, "--output_dir", str(tmp_path / "out")])


def test_a_recipe_chooses_the_algorithm_and_its_options_are_checked(tmp_path):
    from trl_diversity.cli.train import parse
    from trl_diversity.errors import UserError

    recipe = tmp_path / "r.yaml"
    recipe.write_text("algorithm: rloo\nnormalize_advantages: true\nbeta: 0.1\n")
    script_args, config, _ = parse([str(recipe), "--output_dir", str(tmp_path / "out")])
    assert script_args.algorithm == "rloo" and isinstance(config, DiversityCFGRLOOConfig)
    assert config.normalize_advantages and config.beta == 0.1
    recipe.write_text("algorithm: rloo\nloss_type: dapo\n")
    with pytest.raises(UserError, match="key `loss_type` is a GRPO option"):
        parse([str(recipe)])
