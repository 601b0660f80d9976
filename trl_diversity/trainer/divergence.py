"""Token-level divergences between the CFG teacher's and the student's next-token distributions.

Three kinds, named as in the config's `distill_divergence`:

- `reverse_kl`: KL(student || teacher), mode-seeking; the reading of the paper's Eq. 2 and our default.
- `forward_kl`: KL(teacher || student), mass-covering.
- `jsd`: the generalised Jensen-Shannon divergence with mixture `m = (1 - b) * p_student + b * p_teacher`,
  `b * KL(teacher || m) + (1 - b) * KL(student || m)` (TRL's GKD convention; `b = 0.5` is the symmetric JSD).

`token_divergence` works on full logits (the reference, and fine for small vocabularies).
`chunked_token_divergence` takes hidden states and LM-head weights instead and never holds more than one
`[tokens, vocab-chunk]` tile of either model's logits; it runs TRL's chunked divergence kernel.
"""

from __future__ import annotations

import math

import torch

from trl_diversity.trainer.trl_internals import (
    ChunkedDivergenceFunction,
    _use_triton,
    chunked_divergence,
    maybe_gather_lm_head_ctx,
)

DIVERGENCES = ("reverse_kl", "forward_kl", "jsd")


def kernel_beta(kind: str, jsd_beta: float = 0.5) -> float:
    """TRL's kernel selects the divergence through one number: 0 = forward KL, 1 = reverse KL, else JSD(beta)."""
    if kind == "forward_kl":
        return 0.0
    if kind == "reverse_kl":
        return 1.0
    if kind == "jsd":
        if not 0.0 < jsd_beta < 1.0:
            raise ValueError(f"The JSD mixture weight must lie strictly between 0 and 1, got {jsd_beta}.")
        return jsd_beta
    raise ValueError(f"Unknown divergence {kind!r}; choose one of {', '.join(DIVERGENCES)}.")


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    # sum_v p * (log p - log q); kl_div takes 0 * log 0 as 0
    return torch.nn.functional.kl_div(log_q, log_p, reduction="none", log_target=True).sum(-1)


def token_divergence(
    student_logits: torch.Tensor,
    teacher_log_probs: torch.Tensor,
    mask: torch.Tensor | None = None,
    kind: str = "reverse_kl",
    jsd_beta: float = 0.5,
) -> torch.Tensor:
    """Per-position divergence `D(teacher, student)` over the vocabulary (last dimension), zero where `mask` is 0.

    Gradients flow to `student_logits` only. Returns a float32 tensor of shape `student_logits.shape[:-1]`.
    """
    kernel_beta(kind, jsd_beta)  # validates `kind`
    log_s = torch.log_softmax(student_logits.float(), dim=-1)
    log_t = torch.log_softmax(teacher_log_probs.detach().float(), dim=-1)
    if kind == "reverse_kl":
        per_token = _kl(log_s, log_t)
    elif kind == "forward_kl":
        per_token = _kl(log_t, log_s)
    else:
        log_m = torch.logaddexp(log_s + math.log(1 - jsd_beta), log_t + math.log(jsd_beta))
        per_token = jsd_beta * _kl(log_t, log_m) + (1 - jsd_beta) * _kl(log_s, log_m)
    if mask is not None:
        per_token = per_token * mask.to(per_token.dtype)
    return per_token


def chunked_token_divergence(
    student_hidden: torch.Tensor,
    student_head: torch.nn.Module | torch.Tensor,
    teacher_hidden: torch.Tensor,
    teacher_head: torch.nn.Module | torch.Tensor,
    kind: str = "reverse_kl",
    jsd_beta: float = 0.5,
    student_logit_scale: float = 1.0,
    teacher_logit_scale: float = 1.0,
    allow_full_logits: bool = True,
) -> torch.Tensor:
    """Per-token divergence from hidden states `[N, H]` and the LM heads that project them to the vocabulary.

    `teacher_hidden` are the CFG-guided teacher hidden states (see `guidance.guide`); `*_head` is an `nn.Linear`
    or its `[V, H]` weight. Gradients flow to the student's hidden states and head weight only. Returns `[N]`.

    Without Triton (on CPU), when the `[N, V]` logits are no larger than one of the kernel's tiles, they are built in
    full instead: the same memory bound, and autograd's fused operations are about 1.6x faster there than the kernel's
    torch fallback. `allow_full_logits=False` always runs the kernel.
    """
    s_weight, s_bias = _weight_and_bias(student_head)
    t_weight, t_bias = _weight_and_bias(teacher_head)
    vocab = head_rows(s_weight)
    if vocab != head_rows(t_weight):
        raise ValueError(f"Student and teacher vocabularies differ ({vocab} vs {head_rows(t_weight)} tokens).")
    one_tile = chunked_divergence.TOKEN_CHUNK_SIZE * chunked_divergence.VOCAB_CHUNK_SIZE
    if allow_full_logits and not _use_triton(student_hidden.device) and len(student_hidden) * vocab <= one_tile:
        with maybe_gather_lm_head_ctx(s_weight, s_bias), maybe_gather_lm_head_ctx(t_weight, t_bias):
            # float32 projections, as in the kernel: CFG-guided logits are too sharp to round to bfloat16
            student_logits = _scaled(_project(student_hidden, s_weight, s_bias), student_logit_scale)
            with torch.no_grad():
                teacher_logits = _scaled(_project(teacher_hidden, t_weight, t_bias), teacher_logit_scale)
        return token_divergence(student_logits, teacher_logits, kind=kind, jsd_beta=jsd_beta)
    divergence, _entropy = ChunkedDivergenceFunction.apply(
        student_hidden,
        s_weight,
        s_bias,
        teacher_hidden.detach(),
        # The teacher's head as itself, not detached: the kernel gathers a ZeRO-3 parameter through its DeepSpeed
        # attributes, which a detached view lacks. The kernel gives the teacher no gradient either way.
        t_weight,
        t_bias,
        kernel_beta(kind, jsd_beta),
        1.0,  # temperature: distil the models' own distributions, not the sampling temperature's
        student_logit_scale,
        None,
        teacher_logit_scale,
        None,
    )
    return divergence


def _project(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    with torch.autocast(hidden.device.type, enabled=False):
        return torch.nn.functional.linear(hidden.float(), weight.float(), None if bias is None else bias.float())


def _scaled(logits: torch.Tensor, scale: float) -> torch.Tensor:
    # Multiplying by 1 changes no float (nor its gradient): skip the `[N, V]` copy, forward and backward, that most
    # models' unit scale would cost.
    return logits if scale == 1.0 else logits * scale


def head_rows(weight: torch.Tensor) -> int:
    """The vocabulary size of an LM head's weight, also when it is sharded."""
    # Outside its gather, a DeepSpeed ZeRO-3 parameter is an empty placeholder; `ds_shape` is its real shape.
    return (weight.ds_shape if hasattr(weight, "ds_shape") else weight.shape)[0]


def _weight_and_bias(head: torch.nn.Module | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(head, torch.Tensor):
        return head, None
    weight, bias = head.weight, getattr(head, "bias", None)
    # FSDP2 shards parameters as DTensors; the kernel needs the full head (as TRL's fused LM head does).
    if hasattr(weight, "full_tensor"):
        weight = weight.full_tensor()
        bias = bias.full_tensor() if bias is not None else None
    return weight, bias
