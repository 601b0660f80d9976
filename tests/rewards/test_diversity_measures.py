"""The built-in diversity measures and the diversity term's baselines, against brute-force computations."""

import itertools
import random

import pytest
import torch

from trl_diversity.rewards import (
    EmbeddingDiversity,
    LexicalDiversity,
    PartitionDiversity,
    group_advantages,
    other_rewards_baselines,
)
from trl_diversity.rewards.partition import unigram_equivalent

WORDS = "the sea sky a red boat sails over under calm storm night light , . ! über café".split()


def random_groups(seed, groups, k):
    rng = random.Random(seed)
    texts = []
    for _ in range(groups):
        base = [rng.choice(WORDS) for _ in range(rng.randint(0, 8))]
        group = []
        for _ in range(k):  # variations of one text, so that some pairs overlap and some are equivalent
            text = [w if rng.random() < 0.6 else rng.choice(WORDS) for w in base] + rng.sample(
                WORDS, rng.randint(0, 3)
            )
            group.append(" ".join(text))
        texts.append(group)
    return texts


def brute_force_rewards(group, dissimilarity):
    """Mean dissimilarity to the others; a pair holding a blank text scores 0 (it adds no diversity)."""

    def s(a, b):
        return 0.0 if not a.strip() or not b.strip() else dissimilarity(a, b)

    k = len(group)
    return [sum(s(group[i], group[j]) for j in range(k) if j != i) / (k - 1) for i in range(k)]


def jaccard_distance(a, b):
    def grams(text):
        tokens = text.lower().replace(",", " , ").replace(".", " . ").replace("!", " ! ").split()
        return set(zip(tokens)) | set(zip(tokens, tokens[1:]))

    x, y = grams(a), grams(b)
    return 1 - len(x & y) / len(x | y) if x | y else 0.0


@pytest.mark.parametrize("k", [2, 3, 5])
def test_lexical_is_one_minus_the_mean_jaccard_overlap_of_word_1_2_grams(k):
    groups = random_groups(k, groups=4, k=k)
    rewards = LexicalDiversity()(prompts=["p"] * 4, completions=groups)
    for group, got in zip(groups, rewards):
        assert got == pytest.approx(brute_force_rewards(group, jaccard_distance), abs=1e-12)


def test_lexical_hand_worked_group():
    # "the sea"/"The sea" identical: 0; "the sea"/"sea the": unigrams shared, bigrams differ: 1 - 2/4; a blank
    # text adds no diversity: its pairs score 0, so it earns 0 (not the group's highest reward).
    rewards = LexicalDiversity().rewards(["the sea", "The sea", "sea the", ""])
    assert rewards == pytest.approx([(0 + 0.5 + 0) / 3, (0 + 0.5 + 0) / 3, (0.5 + 0.5 + 0) / 3, 0.0])
    assert LexicalDiversity().rewards(["", ""]) == [0.0, 0.0]


@pytest.mark.parametrize("k", [2, 4, 6])
def test_partition_is_the_share_of_the_others_not_equivalent(k):
    groups = random_groups(10 + k, groups=5, k=k)
    rewards = PartitionDiversity()(prompts=["p"] * 5, completions=groups)
    for group, got in zip(groups, rewards):
        not_equivalent = [
            sum(not unigram_equivalent(group[min(i, j)], group[max(i, j)]) for j in range(k) if j != i) / (k - 1)
            for i in range(k)
        ]
        assert got == not_equivalent


def test_partition_hand_worked_group_and_a_custom_test():
    assert PartitionDiversity().rewards(["Paris", "paris!", "London"]) == [0.5, 0.5, 1.0]
    exact = PartitionDiversity(equivalent=lambda a, b: a == b)
    assert exact.rewards(["Paris", "paris!", "Paris"]) == [0.5, 1.0, 0.5]
    # A test that is not symmetric is asked once per pair (earlier sample first): the matrix stays symmetric.
    asymmetric = PartitionDiversity(equivalent=lambda a, b: len(a) <= len(b))
    matrix = asymmetric.dissimilarities(["aaa", "a", "aa"])
    assert matrix == [list(row) for row in zip(*matrix)]


class TableEmbedder:
    """Stands in for a sentence-transformers model: a fixed random vector per text."""

    def __init__(self, dim=6):
        self.dim = dim

    def encode(self, texts, convert_to_tensor=True, **kwargs):
        vectors = []
        for text in texts:
            generator = torch.Generator().manual_seed(sum(map(ord, text)) % 10_000)
            vectors.append(torch.randn(self.dim, generator=generator))
        return torch.stack(vectors)


def test_embedding_is_the_mean_cosine_distance_to_the_others():
    embedder = TableEmbedder()
    groups = random_groups(7, groups=3, k=4)

    def cosine_distance(a, b):
        x, y = embedder.encode([a])[0], embedder.encode([b])[0]
        return 1 - (torch.dot(x, y) / (x.norm() * y.norm())).item()

    rewards = EmbeddingDiversity(embedder)(prompts=["p"] * 3, completions=groups)
    for group, got in zip(groups, rewards):
        assert got == pytest.approx(brute_force_rewards(group, cosine_distance), abs=1e-5)


@pytest.mark.parametrize("measure", [LexicalDiversity(), PartitionDiversity()])
@pytest.mark.parametrize("k", [2, 3, 5])
def test_pairwise_advantage_uses_the_exact_leave_one_out_baseline(measure, k):
    group = random_groups(k, groups=1, k=k)[0]
    matrix = measure.dissimilarities(group)
    rewards = torch.tensor(measure.rewards(group), dtype=torch.float64)
    advantages = group_advantages(rewards, k, pairwise=True)
    for i in range(k):
        others = [j for j in range(k) if j != i]
        pairs = list(itertools.combinations(others, 2))
        baseline = sum(matrix[a][b] for a, b in pairs) / len(pairs) if pairs else 0.0
        assert advantages[i].item() == pytest.approx(rewards[i].item() - baseline, abs=1e-9)


def test_general_group_rewards_use_the_mean_of_the_other_rewards():
    rewards = torch.tensor([1.0, 2.0, 4.0, 8.0, 0.0, 0.0, 3.0, 3.0])
    expected = [(sum(rewards[4 * (i // 4) : 4 * (i // 4) + 4]) - rewards[i]) / 3 for i in range(8)]
    torch.testing.assert_close(other_rewards_baselines(rewards, 4), torch.stack(expected))
    torch.testing.assert_close(group_advantages(rewards, 4, pairwise=False), rewards - torch.stack(expected))
    # Not divided by any spread: doubling the rewards doubles the advantages.
    torch.testing.assert_close(group_advantages(2 * rewards, 4, False), 2 * group_advantages(rewards, 4, False))
