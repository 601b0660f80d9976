"""Position ids for the student's forwards, counted from each row's first real token, as the teacher counts them.

TRL runs the policy (and its reference) on left-padded `prompt + completion` rows without `position_ids`. A model with
learned absolute positions (GPT-2, OPT) then counts from the first pad: a short prompt sits at other positions than
when it is generated (`generate` counts from the first real token) or run by the CFG teacher (`teacher/guided_forward.py`). At
`guidance_scale=1` the teacher is then not the student, and the distillation loss is not zero where it must be.
Rotary models only see position differences, so for them this changes nothing beyond float rounding.

While the method distils, `positions_from_attention_mask` gives every forward of the listed models that has an
attention mask and no `position_ids` the positions `cumsum(mask) - 1`. With the method off nothing is installed, so
the trainer stays TRL's exactly.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager

import torch

from trl_diversity.trainer.hidden_states import backbone


def _add_positions(_module, args, kwargs):
    if kwargs.get("position_ids") is not None:
        return None
    mask = kwargs.get("attention_mask")
    if not isinstance(mask, torch.Tensor) or mask.dim() != 2:
        return None
    tokens = kwargs.get("input_ids", args[0] if args else None)
    if tokens is None:
        tokens = kwargs.get("inputs_embeds")
    if tokens is None:
        return None
    length = tokens.shape[1]
    # The mask covers any cached prefix too: the positions of the new tokens are its last `length` columns.
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)[:, -length:]
    return args, {**kwargs, "position_ids": positions}


@contextmanager
def positions_from_attention_mask(*models: torch.nn.Module | None):
    """Within the block, forwards of `models` (None entries skipped) get positions counted from the first real token."""
    with ExitStack() as stack:
        for model in models:
            if model is None:
                continue
            while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):  # DDP, DeepSpeed
                model = model.module
            handle = backbone(model).register_forward_pre_hook(_add_positions, with_kwargs=True)
            stack.callback(handle.remove)
        yield
