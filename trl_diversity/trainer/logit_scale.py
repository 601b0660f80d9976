"""The factor a model multiplies its LM head's output by before the softmax.

CFG is computed on hidden states and projected by the LM head afterwards, so the distillation must apply the same
scaling the model's own forward applies, or it distils another distribution than the one the model samples from.
Families spell it differently (the same reading as TRL's fused LM head, `trl/trainer/utils.py`):

- `logit_scale` (Cohere) and `output_multiplier` multiply the logits; a `None` value means "no scaling";
- `lm_head_multiplier` (Falcon-H1) multiplies them;
- `logits_scaling` *divides* them (Granite, MiniCPM3), except in HyperCLOVA X, which multiplies by it.
"""

from __future__ import annotations

import torch

from trl_diversity.trainer.hidden_states import language_model

# Read in this order; the first one a config sets wins.
MULTIPLIERS = ("logit_scale", "output_multiplier", "lm_head_multiplier")
# Model types whose `logits_scaling` multiplies instead of dividing.
MULTIPLYING_LOGITS_SCALING = ("hyperclovax",)


def text_config(model: torch.nn.Module):
    """The language model's config (`text_config` of a vision-language model), through DDP and PEFT wrappers."""
    model = language_model(model.module if hasattr(model, "module") else model)
    return model.config.get_text_config()


def logit_scale(model: torch.nn.Module) -> float:
    """The multiplier of the LM head's output in `model`'s own forward (1.0 when it applies none)."""
    config = text_config(model)
    for name in MULTIPLIERS:
        value = getattr(config, name, None)
        if value is not None:
            return float(value)
    scaling = getattr(config, "logits_scaling", None)
    if scaling is None:
        return 1.0
    return float(scaling) if config.model_type in MULTIPLYING_LOGITS_SCALING else 1.0 / float(scaling)
