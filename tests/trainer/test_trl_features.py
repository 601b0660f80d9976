"""TRL 1.16's features with the method on: entropy control, multi-objective aggregation, async rewards, and the
keywords TRL passes reward functions (`log_metric`, `trainer_state`), for group rewards too."""

import asyncio

import pytest
import torch
from tiny_training import TINY_RUN, logged, make_trainer
from transformers import AutoTokenizer
from trl import GRPOConfig, GRPOTrainer

from trl_diversity.data import load_prompts
from trl_diversity.rewards import as_reward_function
from trl_diversity.rewards.baselines import group_advantages
from trl_diversity.rewards.text import completion_text

STEPS = dict(max_steps=1, learning_rate=0.0)  # the step's samples and loss, with weights that do not move


@pytest.mark.parametrize("method", [dict(), dict(distill_coef=0.0, diversity_coef=2.0)])
def test_entropy_bonus_enters_the_loss_as_trl_defines_it(tiny_checkpoint, tmp_path, method):
    """The same samples with and without TRL's entropy bonus: the loss differs by exactly -entropy_coef x entropy."""
    losses, entropies = {}, {}
    for coef in (0.0, 0.5):
        trainer = make_trainer(tiny_checkpoint, tmp_path / str(coef), entropy_coef=coef, **STEPS, **method)
        trainer.train()
        losses[coef], entropies[coef] = logged(trainer, "loss")[0], logged(trainer, "entropy")[0]
        assert logged(trainer, "distill/divergence" if trainer.args.distill_coef else "diversity/reward/mean")
    assert entropies[0.0] == pytest.approx(entropies[0.5])
    assert losses[0.5] - losses[0.0] == pytest.approx(-0.5 * entropies[0.0], rel=1e-4)


def test_adaptive_entropy_control_moves_its_coefficient(tiny_checkpoint, tmp_path):
    # The target is far above any entropy the model has: the coefficient rises by its delta every optimizer step.
    trainer = make_trainer(
        tiny_checkpoint,
        tmp_path,
        use_adaptive_entropy=True,
        entropy_coef=0.01,
        entropy_coef_delta=0.02,
        entropy_target=100.0,
        max_steps=3,
    )
    trainer.train()
    assert logged(trainer, "entropy_coef") == pytest.approx([0.03, 0.05, 0.07])
    assert len(logged(trainer, "distill/divergence")) == 3


def length_reward(completions, **kwargs):
    return [float(len(completion_text(c))) for c in completions]


def word_reward(completions, **kwargs):
    return [float(len(completion_text(c).split())) for c in completions]


@pytest.mark.parametrize("aggregation", ["sum_then_normalize", "normalize_then_sum"])
def test_diversity_advantage_adds_to_either_aggregation_of_quality_rewards(tiny_checkpoint, tmp_path, aggregation):
    """TRL aggregates the quality rewards into its advantage; the diversity term is added after, the same either
    way: advantages at coef 3 - advantages at coef 1 (same samples) = 2 x (r_i - b_i)."""
    advantages = {}
    for coef in (1.0, 3.0):
        trainer = make_trainer(
            tiny_checkpoint,
            tmp_path / str(coef),
            distill_coef=0.0,
            diversity_coef=coef,
            diversity_reward="toy_group_rewards:rank_by_length",
            multi_objective_aggregation=aggregation,
            reward_funcs=[length_reward, word_reward],
            reward_weights=[1.0, 0.5],
        )
        trainer.model.train()
        torch.manual_seed(0)
        output = trainer._generate_and_score_completions([trainer.train_dataset[i // 4] for i in range(8)])
        advantages[coef] = (output["advantages"], trainer._latest_diversity_rewards)
    rewards = advantages[3.0][1]
    torch.testing.assert_close(rewards, advantages[1.0][1])  # the same samples
    assert rewards.std() > 0
    torch.testing.assert_close(
        advantages[3.0][0] - advantages[1.0][0], 2.0 * group_advantages(rewards, 4, pairwise=False)
    )


def test_an_async_quality_reward_trains_with_the_method(tiny_checkpoint, tmp_path):
    async def async_length(completions, **kwargs):
        await asyncio.sleep(0)
        return [float(len(completion_text(c))) for c in completions]

    trainer = make_trainer(tiny_checkpoint, tmp_path, reward_funcs=[async_length], max_steps=2)
    trainer.train()
    assert len(logged(trainer, "rewards/async_length/mean")) == 2
    assert all(value > 0 for value in logged(trainer, "rewards/async_length/mean"))
    assert len(logged(trainer, "distill/divergence")) == 2


SEEN = []


async def async_rank_by_length(prompt, completions, log_metric=None, trainer_state=None, **kwargs):
    """An async group reward (a judge behind an API, say) that logs a metric of its own through TRL."""
    await asyncio.sleep(0)
    SEEN.append((completion_text(prompt), len(completions), trainer_state.global_step))
    lengths = [len(completion_text(c)) for c in completions]
    log_metric("toy/longest", float(max(lengths)))
    return [float(sorted(lengths).index(length)) / (len(lengths) - 1) for length in lengths]


def test_an_async_group_reward_gets_log_metric_and_trainer_state(tiny_checkpoint, tmp_path, monkeypatch):
    SEEN.clear()
    monkeypatch.setattr("toy_group_rewards.async_rank_by_length", async_rank_by_length, raising=False)
    trainer = make_trainer(
        tiny_checkpoint, tmp_path, diversity_reward="toy_group_rewards:async_rank_by_length", max_steps=2
    )
    trainer.train()
    assert [size for _, size, _ in SEEN] == [4] * 4  # 2 steps x 2 groups, each whole
    assert [step for _, _, step in SEEN] == [0, 0, 1, 1]
    longest = logged(trainer, "toy/longest")
    assert len(longest) == 2 and all(value > 0 for value in longest)
    assert len(logged(trainer, "diversity/reward/mean")) == 2


def test_a_wrapped_async_group_reward_logs_through_plain_grpo(tiny_checkpoint, tmp_path):
    SEEN.clear()
    trainer = GRPOTrainer(
        model=tiny_checkpoint,
        args=GRPOConfig(output_dir=str(tmp_path), **{**TINY_RUN, "max_steps": 1}),
        reward_funcs=[as_reward_function(async_rank_by_length, num_generations=4)],
        train_dataset=load_prompts("train", limit=8),
        processing_class=AutoTokenizer.from_pretrained(tiny_checkpoint),
    )
    trainer.train()
    assert len(logged(trainer, "toy/longest")) == 1
    assert [size for _, size, _ in SEEN] == [4, 4]
