"""Sentence embeddings of completions, with the sentence-transformers model the diversity reward compares them by."""

from __future__ import annotations

import os
from contextlib import contextmanager

import torch
from sentence_transformers import SentenceTransformer

from trl_diversity.defaults import resolve_embedder
from trl_diversity.rewards.text import completion_text  # noqa: F401  (its former home; kept importable here)


def load_embedder(name_or_path: str | None, device: torch.device | str | None = None) -> SentenceTransformer:
    """Load a sentence-transformers model; `None` means the embedded default (all-MiniLM-L6-v2)."""
    resolved = resolve_embedder(name_or_path)
    looks_like_path = os.path.sep in resolved or resolved.startswith(".")
    if looks_like_path and not os.path.isdir(resolved):
        raise ValueError(
            f"The diversity embedder {resolved!r} does not exist. Pass the folder of a sentence-transformers model, a "
            "hub id, or None for the embedded default (all-MiniLM-L6-v2)."
        )
    try:
        with _whole_on_every_process():
            return SentenceTransformer(resolved, device=str(device) if device is not None else None)
    except Exception as error:  # sentence-transformers raises many kinds; the user needs to know which model failed
        raise ValueError(
            f"Could not load the diversity embedder {resolved!r} as a sentence-transformers model ({error}). Pass "
            "the folder or hub id of a sentence-transformers model, or None for the embedded default."
        ) from error


@contextmanager
def _whole_on_every_process():
    """Load outside DeepSpeed ZeRO-3's partitioning.

    Under ZeRO-3, transformers partitions every model that `from_pretrained` builds across the processes: its
    parameters become empty placeholders, gathered only inside a DeepSpeed engine's forward. The embedder is small,
    frozen and called outside any engine, so each process keeps a whole copy. (Accelerate's
    `zero3_init_context_manager(enable=False)` leaves transformers' ZeRO-3 switch on, so it cannot serve here.)
    """
    from transformers.integrations import deepspeed as hf_deepspeed

    switch = hf_deepspeed._hf_deepspeed_config_weak_ref  # the switch `is_deepspeed_zero3_enabled()` reads
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = switch


@torch.no_grad()
def embed(embedder: SentenceTransformer, texts: list[str], batch_size: int = 64) -> torch.Tensor:
    """`[len(texts), D]` float32 embeddings (not normalised; the cosine is taken later)."""
    embeddings = embedder.encode(
        texts, batch_size=batch_size, convert_to_tensor=True, show_progress_bar=False, normalize_embeddings=False
    )
    return embeddings.float()
