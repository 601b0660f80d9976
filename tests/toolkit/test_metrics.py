import pytest
import torch

from trl_diversity.toolkit.metrics import bootstrap_ci, distinct_n, self_bleu, vendi_score
from trl_diversity.toolkit.pareto import hypervolume, pareto_front, pareto_mask


def test_vendi_score_of_identical_and_orthogonal_embeddings():
    assert vendi_score(torch.ones(4, 8)) == pytest.approx(1.0, abs=1e-6)
    assert vendi_score(torch.eye(4)) == pytest.approx(4.0, abs=1e-6)
    # two identical pairs of orthogonal vectors: two distinct samples
    assert vendi_score(torch.tensor([[1.0, 0], [1, 0], [0, 1], [0, 1]])) == pytest.approx(2.0, abs=1e-6)


def test_distinct_n_by_hand():
    texts = ["the cat sat", "the cat ran"]
    assert distinct_n(texts, 1) == pytest.approx(4 / 6)  # the, cat, sat, ran over 6 unigrams
    assert distinct_n(texts, 2) == pytest.approx(3 / 4)  # (the cat) twice, (cat sat), (cat ran)
    assert distinct_n(["a"], 2) == 0.0


def test_self_bleu_of_identical_and_disjoint_texts():
    same = ["the old lighthouse keeper watched the sea"] * 3
    assert self_bleu(same) == pytest.approx(100.0)
    disjoint = ["apples grow on tall trees", "rivers carry cold water down", "stars shine over quiet hills"]
    assert self_bleu(disjoint) == pytest.approx(0.0, abs=1e-6)


def test_bootstrap_interval_contains_the_mean_and_narrows_with_more_prompts():
    torch.manual_seed(0)
    few, many = torch.rand(10).tolist(), torch.rand(400).tolist()
    mean, low, high = bootstrap_ci(few)
    assert low <= mean <= high
    _, low_many, high_many = bootstrap_ci(many)
    assert high_many - low_many < high - low
    assert bootstrap_ci([0.5, 0.5]) == (0.5, 0.5, 0.5)


def test_pareto_front_and_hypervolume_on_fixed_points():
    points = [(1.0, 3.0), (2.0, 2.0), (3.0, 1.0), (1.5, 1.5), (0.5, 0.5)]
    assert pareto_mask(points) == [True, True, True, False, False]
    assert pareto_front(points) == [(1.0, 3.0), (2.0, 2.0), (3.0, 1.0)]
    # union of the rectangles [0,1]x[0,3], [0,2]x[0,2], [0,3]x[0,1]
    assert hypervolume(points, (0.0, 0.0)) == pytest.approx(6.0)
    # a reference point that cuts the front: only (2, 2) rises above it on both axes
    assert hypervolume(points, (1.5, 1.0)) == pytest.approx((2.0 - 1.5) * (2.0 - 1.0))
    assert hypervolume([(0.5, 0.5)], (1.0, 1.0)) == 0.0
