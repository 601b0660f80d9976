"""Property tests of the math (hypothesis)."""

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings
from trl.kernels import chunked_divergence

from trl_diversity import chunked_token_divergence, guided_log_probs, token_divergence
from trl_diversity.rewards.diversity import pairwise_dissimilarity

seeds = st.integers(0, 2**31 - 1)
KINDS = ["reverse_kl", "forward_kl", "jsd"]


def logits(seed, *shape, scale=3.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


@given(seed=seeds, scale=st.floats(0.1, 10.0))
def test_guided_log_probs_normalise_and_scale_one_is_conditional(seed, scale):
    cond, uncond = logits(seed, 3, 17), logits(seed + 1, 3, 17)
    guided = guided_log_probs(cond, uncond, scale)
    torch.testing.assert_close(guided.logsumexp(-1), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(guided_log_probs(cond, uncond, 1.0), cond.log_softmax(-1), atol=1e-5, rtol=1e-5)


@given(seed=seeds, kind=st.sampled_from(KINDS))
def test_divergences_are_non_negative_and_zero_exactly_on_equal_distributions(seed, kind):
    student, teacher = logits(seed, 4, 23), logits(seed + 1, 4, 23).log_softmax(-1)
    assert (token_divergence(student, teacher, kind=kind) >= -1e-6).all()
    assert (token_divergence(student, teacher, kind=kind) > 1e-6).all()  # random distributions differ
    same = token_divergence(student, student.log_softmax(-1), kind=kind)
    assert same.abs().max() < 1e-5


@given(seed=seeds, k=st.integers(2, 6), groups=st.integers(1, 3))
def test_pairwise_dissimilarity_is_symmetric_and_within_zero_two(seed, k, groups):
    matrix = pairwise_dissimilarity(logits(seed, groups * k, 5), k)
    torch.testing.assert_close(matrix, matrix.transpose(1, 2))
    assert ((matrix >= 0) & (matrix <= 2)).all()
    assert torch.equal(torch.diagonal(matrix, dim1=1, dim2=2), torch.zeros(groups, k))


@settings(max_examples=10, deadline=None)
@given(seed=seeds, kind=st.sampled_from(KINDS), token_chunk=st.integers(1, 7), vocab_chunk=st.integers(3, 40))
def test_chunked_divergence_does_not_depend_on_the_chunk_sizes(seed, kind, token_chunk, vocab_chunk):
    hidden = torch.randn(9, 6, generator=torch.Generator().manual_seed(seed))
    teacher_hidden = torch.randn(9, 6, generator=torch.Generator().manual_seed(seed + 1))
    student_head, teacher_head = logits(seed + 2, 50, 6, scale=1.0), logits(seed + 3, 50, 6, scale=1.0)
    reference = chunked_token_divergence(hidden, student_head, teacher_hidden, teacher_head, kind)  # full logits
    patch = pytest.MonkeyPatch()
    patch.setattr(chunked_divergence, "TOKEN_CHUNK_SIZE", token_chunk)
    patch.setattr(chunked_divergence, "VOCAB_CHUNK_SIZE", vocab_chunk)
    try:
        chunked = chunked_token_divergence(
            hidden, student_head, teacher_hidden, teacher_head, kind, allow_full_logits=False
        )
    finally:
        patch.undo()
    torch.testing.assert_close(chunked, reference, atol=1e-5, rtol=1e-4)
