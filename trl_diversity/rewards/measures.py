"""The built-in diversity measures: batched group rewards of pairwise form.

Each measure defines a dissimilarity `s(a, b)` between two completions (symmetric, `s(a, a) = 0`), and rewards
sample `i` of a group with its mean dissimilarity to the others, `r_i = mean_{j != i} s(y_i, y_j)`. The group's mean
reward is then its mean pairwise dissimilarity, and the exact leave-one-out baseline applies (`pairwise = True`).

- `EmbeddingDiversity`: `1 - cos` of sentence-transformers embeddings (the paper's measure; needs an embedder);
- `LexicalDiversity`: `1 -` Jaccard overlap of the sets of word n-grams (no model);
- `PartitionDiversity`: 1 when the two are *not* equivalent, 0 when they are, so `r_i` is the share of the other
  `k - 1` samples that are not equivalent to sample `i`. The equivalence test is pluggable; the default is the unigram
  rule that evaluation's `distinct_k` uses (`partition.py`), so training and evaluation judge sameness alike.

An empty or whitespace-only completion adds no diversity: every pair it is in scores 0, under every measure. So it
earns the lowest reward of its group (0) and raises no other sample's reward. Without this rule an empty answer is
"maximally different" from any text, and the diversity reward pays the policy to stop at once (reward hacking that
stays hidden while almost every completion is clipped at `max_completion_length`). The rule keeps `s` symmetric with
`s(a, a) = 0`, so the exact leave-one-out baseline still applies; evaluation's `pairwise_diversity` uses it too.
"""

from __future__ import annotations

import re

from trl_diversity.rewards.partition import EquivalenceTest, unigram_equivalent
from trl_diversity.rewards.text import completion_text


class PairwiseDiversity:
    """Base of the pairwise measures: subclasses give `dissimilarities(texts)`, a symmetric `k x k` matrix."""

    batched = True  # scores all the groups a process holds in one call
    pairwise = True  # r_i is a mean of symmetric pairwise terms: the trainer uses the exact leave-one-out baseline

    def dissimilarities(self, texts: list[str]) -> list[list[float]]:
        raise NotImplementedError

    def rewards(self, texts: list[str]) -> list[float]:
        """`r_i = mean_{j != i} s(y_i, y_j)` for one group, with every pair holding a blank completion at 0."""
        k = len(texts)
        if k < 2:
            raise ValueError(f"{type(self).__name__} compares a prompt's samples: it needs at least 2, got {k}.")
        matrix = without_blank_pairs(self.dissimilarities(texts), texts)
        return [sum(matrix[i][j] for j in range(k) if j != i) / (k - 1) for i in range(k)]

    def __call__(self, prompts, completions, **kwargs) -> list[list[float]]:
        return [self.rewards([completion_text(c) for c in group]) for group in completions]


def is_blank(text: str) -> bool:
    """An empty or whitespace-only completion: it says nothing, so it differs from nothing."""
    return not text.strip()


def without_blank_pairs(matrix: list[list[float]], texts: list[str]) -> list[list[float]]:
    """The dissimilarity matrix with every pair that holds a blank text set to 0 (see the module docstring)."""
    blank = [is_blank(text) for text in texts]
    return [[0.0 if blank[i] or blank[j] else value for j, value in enumerate(row)] for i, row in enumerate(matrix)]


class EmbeddingDiversity(PairwiseDiversity):
    """`s(a, b) = 1 - cos(E(a), E(b))` with a sentence-transformers model `E` (a loaded model, a name, or None for
    the bundled all-MiniLM-L6-v2)."""

    def __init__(self, embedder=None, device=None):
        if embedder is None or isinstance(embedder, str):
            from trl_diversity.rewards.embedder import load_embedder

            embedder = load_embedder(embedder, device=device)
        self.embedder = embedder

    def dissimilarities(self, texts: list[str]) -> list[list[float]]:
        from trl_diversity.rewards.diversity import pairwise_dissimilarity
        from trl_diversity.rewards.embedder import embed

        # One group per encoder call: a group's embeddings, hence its rewards, then do not depend on which other
        # groups share the call (padding), i.e. on how groups were spread over processes.
        return pairwise_dissimilarity(embed(self.embedder, texts), len(texts))[0].tolist()


def ngrams(text: str, max_n: int) -> set[tuple[str, ...]]:
    """The set of n-grams, n = 1 .. max_n, over lowercased word and punctuation tokens."""
    tokens = re.findall(r"\w+|[^\w\s]", text.lower())
    return {tuple(tokens[i : i + n]) for n in range(1, max_n + 1) for i in range(len(tokens) - n + 1)}


class LexicalDiversity(PairwiseDiversity):
    """`s(a, b) = 1 - |A & B| / |A | B|` over the sets of word n-grams (n = 1 .. `max_n`); two empty texts are alike.

    Needs no model. Tokens are lowercased runs of word characters (any script) and single punctuation marks, so
    code and other languages are compared token by token too.
    """

    def __init__(self, max_n: int = 2):
        if max_n < 1:
            raise ValueError(f"max_n must be at least 1, got {max_n}.")
        self.max_n = max_n

    def dissimilarities(self, texts: list[str]) -> list[list[float]]:
        grams = [ngrams(text, self.max_n) for text in texts]
        matrix = [[0.0] * len(texts) for _ in texts]
        for i in range(len(texts)):
            for j in range(i + 1, len(texts)):
                union = len(grams[i] | grams[j])
                overlap = len(grams[i] & grams[j]) / union if union else 1.0
                matrix[i][j] = matrix[j][i] = 1.0 - overlap
        return matrix


class PartitionDiversity(PairwiseDiversity):
    """`s(a, b) = 0` if `equivalent(a, b)` else 1: `r_i` is the share of the other samples not equivalent to `y_i`.

    The default test is NoveltyBench's offline unigram rule, the one evaluation's `distinct_k` partitions by. A custom
    test is called on each pair once, earlier sample first, so the matrix is symmetric even if the test is not.
    """

    def __init__(self, equivalent: EquivalenceTest = unigram_equivalent):
        self.equivalent = equivalent

    def dissimilarities(self, texts: list[str]) -> list[list[float]]:
        matrix = [[0.0] * len(texts) for _ in texts]
        for i in range(len(texts)):
            for j in range(i + 1, len(texts)):
                matrix[i][j] = matrix[j][i] = 0.0 if self.equivalent(texts[i], texts[j]) else 1.0
        return matrix
