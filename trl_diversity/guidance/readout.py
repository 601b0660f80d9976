"""The same model read out at an earlier layer: the negative branch of autoguidance without a second model.

Layer N's output (after N decoder blocks) is passed through the model's final norm, as the last layer's output is,
and then read by the same LM head (DoLa, Chuang et al. 2023, reads early layers this way). The hidden state after the
final norm is what the head projects, so it combines with the other branches' final hidden states.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch


def backbone(model: torch.nn.Module) -> torch.nn.Module:
    """The decoder stack of a causal LM (through PEFT's and DDP's wrappers): `model.model` for Llama-style models."""
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module  # DDP, DeepSpeed
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()  # PEFT
    return model.base_model


# Where decoder stacks keep their blocks and their final norm, across transformers' families.
_LAYER_LISTS = ("layers", "h", "blocks", "decoder.layers")
_FINAL_NORMS = ("norm", "ln_f", "final_layernorm", "final_layer_norm", "final_norm", "decoder.final_layer_norm")


def _lookup(module: torch.nn.Module, path: str):
    for part in path.split("."):
        module = getattr(module, part, None)
        if module is None:
            return None
    return module


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    stack = backbone(model)
    for path in _LAYER_LISTS:
        layers = _lookup(stack, path)
        if isinstance(layers, torch.nn.ModuleList):
            return layers
    raise ValueError(
        f"Cannot find the decoder layers of {type(stack).__name__} for an early-layer negative (looked for "
        f"{', '.join(_LAYER_LISTS)}): use a context negative instead."
    )


def final_norm(model: torch.nn.Module) -> torch.nn.Module:
    stack = backbone(model)
    for path in _FINAL_NORMS:
        norm = _lookup(stack, path)
        if isinstance(norm, torch.nn.Module):
            return norm
    raise ValueError(
        f"Cannot find the final norm of {type(stack).__name__} for an early-layer negative (looked for "
        f"{', '.join(_FINAL_NORMS)}): use a context negative instead."
    )


def num_layers(model: torch.nn.Module) -> int:
    return len(decoder_layers(model))


@contextmanager
def capture_layer_outputs(model: torch.nn.Module, layers: list[int]):
    """Collect, for each of `layers` (N = after N blocks), its output hidden states of every forward run inside the
    block, in call order: `{N: [tensor, ...]}`. Set `paused[0] = True` (the second value yielded) to skip forwards."""
    blocks = decoder_layers(model)
    captured: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    paused = [False]
    handles = []
    for layer in layers:

        def hook(_module, _args, output, layer=layer):
            if not paused[0]:
                captured[layer].append(output[0] if isinstance(output, tuple) else output)

        handles.append(blocks[layer - 1].register_forward_hook(hook))
    try:
        yield captured, paused
    finally:
        for handle in handles:
            handle.remove()


def read_out(model: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """An early layer's hidden states as the head reads the last layer's: through the final norm."""
    return final_norm(model)(hidden)
