"""The quality term of the quality x diversity reward (`diversity_quality="teacher_likelihood"`).

DARLING (Meta, 2025) rewards diversity only as far as a sample is good: its reward is a product, quality x
diversity, not a sum. Our quality term is the frozen CFG teacher's own judgement of the sample, with no reward model
and nothing the evaluation's judges see:

    q_i = exp(mean over the tokens t of y_i of log p_teacher,gamma(y_i,t | x, y_i,<t))

the geometric-mean probability that the CFG-guided teacher gives the sample's tokens, in (0, 1]. A sample that
drifts off the prompt, or into tokens the guided teacher finds unlikely, gets a small q_i, so its diversity earns it
less.

The weight of a sample is its `q_i` relative to its group's likeliest sample (`relative_to_group_best`):

    w_i = q_i / max_j q_j = exp(l_i - max_j l_j),    l_i the mean token log-probability,

so the likeliest sample of a group keeps its full diversity reward and a sample whose tokens the teacher finds, per
token, e times less likely keeps 1/e of it. Weights never exceed 1, so `diversity_coef` bounds the advantage as it
does without them. (Dividing by the group's mean instead was tried first and dropped: the guided teacher's per-token
likelihoods of the student's samples are small (about 0.02 on the default job) and spread widely within a group, so
mean-relative weights reached several times 1 and multiplied the diversity advantage's size by about 6 at
`diversity_coef=50`.) The teacher's guided hidden states are the ones the distillation already computes, so the term
costs one LM-head projection of the sampled tokens.
"""

from __future__ import annotations

import torch

from trl_diversity.trainer.divergence import _project, _weight_and_bias
from trl_diversity.trainer.trl_internals import maybe_gather_lm_head_ctx

DIVERSITY_QUALITIES = ("none", "teacher_likelihood")

# Tokens projected to the vocabulary at once: bounds the [tokens, vocab] float32 logits held at a time.
TOKEN_CHUNK = 256


def sampled_token_log_probs(
    hidden: torch.Tensor, head: torch.nn.Module | torch.Tensor, token_ids: torch.Tensor, scale: float = 1.0
) -> torch.Tensor:
    """`log softmax(scale * head(hidden))[token]` for each row of `hidden` (`[T, H]`) and its token (`[T]`): `[T]`."""
    weight, bias = _weight_and_bias(head)
    pieces = []
    with torch.no_grad(), maybe_gather_lm_head_ctx(weight, bias):
        for start in range(0, len(hidden), TOKEN_CHUNK):
            logits = _project(hidden[start : start + TOKEN_CHUNK], weight, bias) * scale
            tokens = token_ids[start : start + TOKEN_CHUNK].to(logits.device)
            pieces.append(logits.gather(-1, tokens[:, None]).squeeze(-1) - logits.logsumexp(-1))
    return torch.cat(pieces) if pieces else hidden.new_zeros(0, dtype=torch.float32)


def sampled_token_mask(
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    pad_id: int | None,
    tool_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """The tokens each completion really sampled (`[B, C]`, 1 where the model drew the token), from TRL's masks.

    TRL's `completion_mask` is the sampled tokens, except under `mask_truncated_completions=True`, where TRL zeroes
    the whole row of a truncated completion (one that ran into `max_completion_length` without an end-of-sequence
    token). Such a row is the only one whose mask is all zero (every finished completion holds at least its
    end-of-sequence token), and its tokens run up to its last non-padding token: a truncated completion ends on a
    token that is neither padding nor end-of-sequence (TRL's own test for truncation), and only padding follows it.
    Tool results (`tool_mask` 0) are not sampled by the model and are left out.
    """
    sampled = completion_mask.clone()
    masked_whole = completion_mask.sum(-1) == 0
    if bool(masked_whole.any()):
        real = completion_ids[masked_whole] != pad_id if pad_id is not None else torch.ones_like(sampled[masked_whole])
        positions = torch.arange(completion_ids.shape[1], device=completion_ids.device)
        last = torch.where(real, positions, -1).amax(-1, keepdim=True)
        sampled[masked_whole] = (positions <= last).to(sampled.dtype)
    if tool_mask is not None:
        sampled = sampled * tool_mask.to(sampled.dtype)
    return sampled


def teacher_likelihood(
    teacher_hidden: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    head: torch.nn.Module | torch.Tensor,
    scale: float = 1.0,
) -> torch.Tensor:
    """`q_i` of each completion (`[B]`): the geometric-mean probability of its tokens under the guided teacher.

    `teacher_hidden` (`[B, C, H]`) are the guided hidden states that predict `completion_ids` (`[B, C]`) position by
    position; `completion_mask` (`[B, C]`) selects the tokens that count: the tokens the model sampled
    (`sampled_token_mask`), so a truncated completion is scored on its tokens like any other. A row with no token to
    count gets q = 1 (no evidence against it)."""
    selected = completion_mask.bool()
    log_probs = sampled_token_log_probs(teacher_hidden[selected], head, completion_ids[selected], scale)
    per_token = torch.zeros(completion_mask.shape, dtype=torch.float32, device=log_probs.device)
    per_token = per_token.masked_scatter(selected.to(log_probs.device), log_probs)
    counts = selected.sum(-1).to(per_token.device)
    mean = per_token.sum(-1) / counts.clamp(min=1)
    return mean.exp()


def relative_to_group_best(quality: torch.Tensor, num_generations: int) -> torch.Tensor:
    """Each `q_i` divided by the largest of its group (rows grouped by `num_generations`): weights in (0, 1], 1 for
    each group's likeliest sample."""
    grouped = quality.view(-1, num_generations)
    return (grouped / grouped.amax(-1, keepdim=True).clamp(min=torch.finfo(grouped.dtype).tiny)).reshape(-1)
