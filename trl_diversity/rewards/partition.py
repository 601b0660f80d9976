"""Functional equivalence of two responses, and the partition of a prompt's `k` samples into equivalence classes.

The default equivalence test is the offline unigram rule of NoveltyBench's `distinct_k` metric (Zhang et al.,
"NoveltyBench: Evaluating Language Models for Humanlike Diversity", 2025), written here from its description:

- words are the lowercased alphanumeric runs of a response;
- two responses of at most 5 words each are equivalent when they share at least half of the longer one's words;
- otherwise they are equivalent when the ROUGE-1 F1 of their word multisets exceeds 0.458.

The partition is greedy: each response joins the first class whose *first member* it is equivalent to, else it
opens a new class. The number of classes is `distinct_k` (1 = all alike, `k` = all different).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence

SHORT_RESPONSE_WORDS = 5
ROUGE1_THRESHOLD = 0.458

EquivalenceTest = Callable[[str, str], bool]


def words(text: str) -> list[str]:
    """Lowercased alphanumeric unigrams."""
    return re.findall(r"[a-z0-9]+", text.lower())


def unigram_equivalent(a: str, b: str) -> bool:
    """NoveltyBench's offline rule: shared words for two short responses, ROUGE-1 F1 > 0.458 otherwise."""
    words_a, words_b = Counter(words(a)), Counter(words(b))
    length_a, length_b = sum(words_a.values()), sum(words_b.values())
    shared = sum((words_a & words_b).values())
    if length_a <= SHORT_RESPONSE_WORDS and length_b <= SHORT_RESPONSE_WORDS:
        return shared >= 0.5 * max(length_a, length_b)
    # ROUGE-1 F1 = 2PR / (P + R) with P = shared / |b|, R = shared / |a|, which is 2 * shared / (|a| + |b|).
    return 2 * shared / (length_a + length_b) > ROUGE1_THRESHOLD


def partition(texts: Sequence[str], equivalent: EquivalenceTest = unigram_equivalent) -> list[int]:
    """The class index of each text under the greedy partition (classes numbered in order of appearance)."""
    representatives: list[str] = []
    labels = []
    for text in texts:
        for index, first in enumerate(representatives):
            if equivalent(first, text):
                labels.append(index)
                break
        else:
            labels.append(len(representatives))
            representatives.append(text)
    return labels


def distinct_k(texts: Sequence[str], equivalent: EquivalenceTest = unigram_equivalent) -> int:
    """The number of equivalence classes among one prompt's samples."""
    return len(set(partition(texts, equivalent)))
