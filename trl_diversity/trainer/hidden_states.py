"""Read the last hidden states (the LM head's input) out of a forward pass that is running anyway.

TRL's GRPO forward returns per-token log-probabilities from a fused LM head, not hidden states. A forward hook on the
model's backbone captures its `last_hidden_state` during that same forward, so the distillation loss costs no second
student pass, and its gradient flows back through the same graph.
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager

import torch
from peft import PeftModel


def language_model(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers causal-LM inside a PEFT wrapper (or the model itself)."""
    return model.get_base_model() if isinstance(model, PeftModel) else model


def backbone(model: torch.nn.Module) -> torch.nn.Module:
    """The decoder stack whose output feeds the LM head (`model.model` for Llama-style models)."""
    return language_model(model).base_model


@contextmanager
def capture_last_hidden_state(model: torch.nn.Module):
    """Collect the backbone's `last_hidden_state` of every forward run inside the block, in call order."""
    captured: list[torch.Tensor] = []

    def hook(_module, _args, output):
        hidden = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]
        captured.append(hidden)

    # Looked up on each use: FSDP and PEFT may replace modules after the trainer is built.
    handle = backbone(model).register_forward_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()


def cache_argument_name(model: torch.nn.Module) -> str:
    """transformers renamed `past_key_values` to `cache` in the 5.x series; use whichever this model takes."""
    parameters = inspect.signature(type(language_model(model)).forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"
