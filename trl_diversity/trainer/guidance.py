"""Classifier-free guidance (CFG): the one place where the guidance formula lives.

    log pi_cfg(. | x, y<t) = log_softmax(l_u + gamma * (l_c - l_u))

`l_c` are the next-token scores given the prompt, `l_u` given the null (unconditional) prompt, both with the same
completion prefix. Log-probabilities may be passed instead of logits: they differ from the logits by a per-row
constant, which the final log-softmax removes.
"""

from __future__ import annotations

import torch


def guide(conditional: torch.Tensor, unconditional: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """`u + gamma * (c - u)`, the un-normalised CFG combination.

    Works on logits and, because the LM head is linear, on the hidden states that feed it: projecting the guided
    hidden states gives the guided logits without ever materialising either branch's `(..., vocab)` logits.
    """
    return unconditional + guidance_scale * (conditional - unconditional)


def guided_log_probs(cond_logits: torch.Tensor, uncond_logits: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """Log-probabilities of the CFG distribution, over the last dimension, computed in float32."""
    return torch.log_softmax(guide(cond_logits.float(), uncond_logits.float(), guidance_scale), dim=-1)
