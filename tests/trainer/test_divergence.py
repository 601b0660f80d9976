import pytest
import torch
import torch.nn.functional as F
from trl.kernels import chunked_divergence

from trl_diversity import chunked_token_divergence, token_divergence
from trl_diversity.trainer.divergence import kernel_beta


def _reference(student_logits, teacher_log_probs, kind, beta=0.5):
    """Per-position divergences from torch.nn.functional.kl_div (input = log q, target = log p gives KL(p || q))."""
    log_s, log_t = student_logits.log_softmax(-1), teacher_log_probs.log_softmax(-1)

    def kl(log_p, log_q):
        return F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(-1)

    if kind == "reverse_kl":
        return kl(log_s, log_t)
    if kind == "forward_kl":
        return kl(log_t, log_s)
    log_m = torch.logsumexp(torch.stack([log_s + torch.tensor(1 - beta).log(), log_t + torch.tensor(beta).log()]), 0)
    return beta * kl(log_t, log_m) + (1 - beta) * kl(log_s, log_m)


@pytest.mark.parametrize("kind", ["reverse_kl", "forward_kl", "jsd"])
def test_token_divergence_matches_kl_div(kind):
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 5, 30) * 2, torch.randn(2, 5, 30).log_softmax(-1)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    got = token_divergence(student, teacher, mask, kind)
    expected = _reference(student, teacher, kind) * mask
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert (got[mask == 0] == 0).all()


@pytest.mark.parametrize("kind", ["reverse_kl", "forward_kl", "jsd"])
@pytest.mark.parametrize("vocab", [50, 40_000])  # 40k spans two of the kernel's 32k vocabulary chunks
@pytest.mark.parametrize("allow_full_logits", [False, True], ids=["kernel", "small-size path"])
def test_chunked_divergence_matches_full_logits_with_gradients(kind, vocab, allow_full_logits):
    torch.manual_seed(0)
    hidden = 8
    student_hidden = torch.randn(6, hidden, requires_grad=True)
    student_head = torch.nn.Linear(hidden, vocab, bias=False)
    teacher_head = torch.nn.Linear(hidden, vocab, bias=False)
    teacher_hidden = torch.randn(6, hidden)

    chunked = chunked_token_divergence(
        student_hidden, student_head, teacher_hidden, teacher_head, kind, allow_full_logits=allow_full_logits
    )
    chunked.sum().backward()
    assert teacher_head.weight.grad is None  # the teacher is frozen
    grad_hidden, grad_head = student_hidden.grad.clone(), student_head.weight.grad.clone()
    student_hidden.grad, student_head.weight.grad = None, None

    full = _reference(student_head(student_hidden), teacher_head(teacher_hidden), kind)
    full.sum().backward()
    torch.testing.assert_close(chunked, full, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(grad_hidden, student_hidden.grad, atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(grad_head, student_head.weight.grad, atol=1e-5, rtol=1e-3)


def test_divergence_is_zero_for_identical_distributions():
    logits = torch.randn(3, 4, 25)
    for kind in ("reverse_kl", "forward_kl", "jsd"):
        assert token_divergence(logits, logits.log_softmax(-1), kind=kind).abs().max() < 1e-5


def test_unknown_divergence_is_rejected_with_the_choices():
    with pytest.raises(ValueError, match="reverse_kl, forward_kl, jsd"):
        kernel_beta("kl")


@pytest.mark.parametrize("kind", ["reverse_kl", "forward_kl", "jsd"])
def test_kernel_path_in_bfloat16_matches_a_float64_reference(kind):
    """The kernel GPU users get (`allow_full_logits=False`), fed bfloat16 hidden states and heads as a bf16 model
    gives them, at a vocabulary spanning two of its tiles, against float64 on the same bfloat16 values."""
    torch.manual_seed(0)
    tokens, hidden, vocab = 12, 64, 40_000
    assert vocab > chunked_divergence.VOCAB_CHUNK_SIZE
    # Weights of a trained model's scale (logits with a std of ~3), so the distributions are peaked, not flat.
    student_head = (torch.randn(vocab, hidden) * 0.4).bfloat16().requires_grad_()
    teacher_head = (torch.randn(vocab, hidden) * 0.4).bfloat16()
    student_hidden = torch.randn(tokens, hidden).bfloat16().requires_grad_()
    teacher_hidden = torch.randn(tokens, hidden).bfloat16()

    got = chunked_token_divergence(
        student_hidden, student_head, teacher_hidden, teacher_head, kind, allow_full_logits=False
    )
    (got * torch.linspace(0.5, 1.5, tokens)).sum().backward()  # unequal token weights reach every gradient row

    student_hidden64 = student_hidden.detach().double().requires_grad_()
    student_head64 = student_head.detach().double().requires_grad_()
    expected = _reference(student_hidden64 @ student_head64.T, teacher_hidden.double() @ teacher_head.double().T, kind)
    (expected * torch.linspace(0.5, 1.5, tokens, dtype=torch.float64)).sum().backward()

    assert got.dtype == torch.float32 and expected.min() > 1e-2  # far from zero: a relative bound means something
    # The kernel projects in float32 and accumulates its statistics in float32: nothing is rounded to bf16 inside.
    torch.testing.assert_close(got.double(), expected, rtol=2e-5, atol=0)
    # Its gradients come back in the inputs' dtype, bfloat16 (8 significant bits): compare at that precision.
    for grad, reference in ((student_hidden.grad, student_hidden64.grad), (student_head.grad, student_head64.grad)):
        assert grad.dtype == torch.bfloat16
        torch.testing.assert_close(grad.double(), reference, rtol=1e-2, atol=1e-2 * reference.abs().max().item())
