"""Group rewards in training: as DiversityCFGTrainer's diversity term, as quality rewards, and under plain GRPO."""

import pytest
import torch
import toy_group_rewards
from tiny_training import logged, make_args, make_trainer
from transformers import AutoTokenizer
from trl import GRPOTrainer

from trl_diversity.data import load_prompts
from trl_diversity.rewards import GroupRewardError, LexicalDiversity, PartitionDiversity, as_reward_function
from trl_diversity.rewards.baselines import group_advantages


def no_embedder(*args, **kwargs):
    raise AssertionError("the embedder was loaded")


def groups_of(values, k=4):
    return [list(values[i : i + k]) for i in range(0, len(values), k)]


@pytest.mark.parametrize(
    "name, pairwise", [("lexical", True), ("partition", True), ("toy_group_rewards:rank_by_length", False)]
)
def test_each_diversity_reward_trains_without_an_embedder(tiny_checkpoint, tmp_path, monkeypatch, name, pairwise):
    monkeypatch.setattr("trl_diversity.rewards.embedder.load_embedder", no_embedder)
    trainer = make_trainer(tiny_checkpoint, tmp_path, diversity_reward=name, max_steps=2)
    assert trainer.embedder is None
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    losses = logged(trainer, "loss")
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    assert any(not torch.equal(p, before[n]) for n, p in trainer.model.named_parameters())
    assert len(logged(trainer, "diversity/reward/mean")) == 2
    assert bool(logged(trainer, "diversity/pairwise")) == pairwise  # a mean pairwise dissimilarity only for those


@pytest.mark.parametrize(
    "name, measure, pairwise",
    [
        ("lexical", LexicalDiversity(), True),
        ("toy_group_rewards:rank_by_length", toy_group_rewards.rank_by_length, False),
    ],
)
def test_diversity_advantage_is_coef_times_reward_minus_its_baseline(
    tiny_checkpoint, tmp_path, name, measure, pairwise
):
    trainer = make_trainer(tiny_checkpoint, tmp_path, distill_coef=0.0, diversity_coef=3.0, diversity_reward=name)
    trainer.model.train()
    output = trainer._generate_and_score_completions([trainer.train_dataset[i // 4] for i in range(8)])
    prompts, groups = list(trainer._logs["prompt"])[::4], groups_of(list(trainer._logs["completion"]))
    if pairwise:
        rewards = measure(prompts=prompts, completions=groups)
    else:
        rewards = [measure(prompt=prompt, completions=group) for prompt, group in zip(prompts, groups)]
    rewards = torch.tensor([r for group in rewards for r in group])
    torch.testing.assert_close(trainer._latest_diversity_rewards, rewards)
    expected = 3.0 * group_advantages(rewards, 4, pairwise)  # GRPO's own advantage is 0: no quality reward
    torch.testing.assert_close(output["advantages"], expected)
    assert list(trainer._logs["extra"]["diversity_reward"]) == pytest.approx(rewards.tolist())


def test_a_group_reward_as_a_quality_reward_and_under_plain_grpo(tiny_checkpoint, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint)
    dataset = load_prompts("train", conversational=True, limit=8)
    ranking = as_reward_function(toy_group_rewards.rank_by_length, num_generations=4)
    ours = make_trainer(tiny_checkpoint, tmp_path / "ours", reward_funcs=[ranking], max_steps=1)
    grpo_args = make_args(tmp_path / "grpo", max_steps=1, distill_coef=0.0, diversity_coef=0.0)
    grpo = GRPOTrainer(
        model=tiny_checkpoint, args=grpo_args, train_dataset=dataset, processing_class=tokenizer, reward_funcs=ranking
    )
    for trainer in (ours, grpo):
        trainer.train()
        logged_rewards = list(trainer._logs["rewards"]["rank_by_length"])
        completions = list(trainer._logs["completion"])
        prompts = list(trainer._logs["prompt"])
        expected = [
            r
            for g, group in enumerate(groups_of(completions))
            for r in toy_group_rewards.rank_by_length(prompts[4 * g], group)
        ]
        assert logged_rewards == torch.tensor(expected).tolist()  # exactly, once stored in GRPO's float32 matrix
        assert logged(trainer, "rewards/rank_by_length/mean") == [pytest.approx(sum(expected) / len(expected))]


@pytest.mark.parametrize(
    "name, message",
    [
        ("one_reward_short", r"returned 3 values for the 4 completions of prompt 0 of the batch"),
        ("not_finite", r"returned inf for completion 0 of prompt 0 of the batch .* finite number"),
        ("broken", r"raised KeyError on prompt 0 of the batch"),
    ],
)
def test_a_bad_diversity_reward_stops_training_before_any_update(tiny_checkpoint, tmp_path, name, message):
    trainer = make_trainer(tiny_checkpoint, tmp_path, diversity_reward=f"toy_group_rewards:{name}", max_steps=2)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    with pytest.raises(GroupRewardError, match=f"'diversity_reward=toy_group_rewards:{name}' {message}"):
        trainer.train()
    assert all(torch.equal(p, before[n]) for n, p in trainer.model.named_parameters())


def test_a_missing_user_reward_fails_before_the_model_loads(tmp_path):
    from trl_diversity import DiversityCFGTrainer

    with pytest.raises(ValueError, match="diversity_reward 'no_such_module:reward': cannot import module"):
        DiversityCFGTrainer(
            model=str(tmp_path / "no-model-here"),  # never reached: the reward is resolved first
            args=make_args(tmp_path, diversity_reward="no_such_module:reward"),
            train_dataset=load_prompts("train", limit=4),
        )


def test_partition_reward_matches_the_evaluation_judge_on_a_trained_batch(tiny_checkpoint, tmp_path):
    # Training's partition reward and evaluation's distinct_k use one equivalence test: a group whose samples are
    # all in one class gets reward 0 everywhere, and all-distinct groups get 1.
    from trl_diversity.rewards.partition import distinct_k

    measure = PartitionDiversity()
    for group in (["the sea is calm"] * 4, ["red", "a storm at night", "blue boats sail", "light"]):
        rewards = measure.rewards(group)
        assert (distinct_k(group) == 1) == all(r == 0 for r in rewards)
        assert (distinct_k(group) == 4) == all(r == 1 for r in rewards)
