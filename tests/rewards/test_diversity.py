import itertools

import pytest
import torch

from trl_diversity import diversity_advantages, group_diversity_rewards, pairs_among_others_baselines


def _cosine_distance(a, b):
    return 1 - torch.dot(a, b) / (a.norm() * b.norm())


@pytest.mark.parametrize("k", [2, 3, 5])
def test_rewards_and_baselines_match_brute_force(k):
    torch.manual_seed(k)
    groups = 3
    embeddings = torch.randn(groups * k, 7)
    rewards = group_diversity_rewards(embeddings, k)
    baselines = pairs_among_others_baselines(rewards, k)
    for g in range(groups):
        members = range(g * k, (g + 1) * k)
        for i in members:
            others = [j for j in members if j != i]
            expected = sum(_cosine_distance(embeddings[i], embeddings[j]) for j in others) / (k - 1)
            assert rewards[i].item() == pytest.approx(expected.item(), abs=1e-5)
            pairs = list(itertools.combinations(others, 2))
            if pairs:
                expected_baseline = sum(_cosine_distance(embeddings[a], embeddings[b]) for a, b in pairs) / len(pairs)
            else:  # k = 2: no pair among the others; the other groups' mean reward is the baseline
                other_groups = [j for j in range(groups * k) if j // k != g]
                expected_baseline = rewards[other_groups].mean()
            assert baselines[i].item() == pytest.approx(float(expected_baseline), abs=1e-5)
    torch.testing.assert_close(diversity_advantages(rewards, k), rewards - baselines)


def test_group_mean_reward_is_the_mean_pairwise_dissimilarity():
    embeddings = torch.randn(4, 5)
    pairs = list(itertools.combinations(range(4), 2))
    mean_pairwise = sum(_cosine_distance(embeddings[a], embeddings[b]) for a, b in pairs) / len(pairs)
    assert group_diversity_rewards(embeddings, 4).mean().item() == pytest.approx(mean_pairwise.item(), abs=1e-5)


def test_identical_or_zero_embeddings_give_zero_finite_rewards():
    same = torch.ones(4, 3)
    torch.testing.assert_close(group_diversity_rewards(same, 4), torch.zeros(4), atol=1e-6, rtol=0)
    zeros = torch.zeros(4, 3)  # e.g. a degenerate embedding of empty completions
    rewards = group_diversity_rewards(zeros, 4)
    assert torch.isfinite(rewards).all()
    assert torch.isfinite(diversity_advantages(rewards, 4)).all()


def test_advantages_are_not_scaled_by_the_group_spread():
    # Doubling every dissimilarity doubles the advantages: no division by a standard deviation.
    torch.manual_seed(0)
    rewards = torch.rand(8)
    torch.testing.assert_close(diversity_advantages(2 * rewards, 4), 2 * diversity_advantages(rewards, 4))


def test_groups_must_divide_the_batch():
    with pytest.raises(ValueError, match="num_generations=3"):
        group_diversity_rewards(torch.randn(4, 3), 3)
