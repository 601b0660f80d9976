"""Checks of the user's inputs that fail fast, with the problem and the fix, before any model work starts."""

from __future__ import annotations

from datasets import Dataset, IterableDataset
from trl.data_utils import is_conversational


def check_prompt_dataset(
    dataset, name: str = "train_dataset", require_prompt: bool = True, allow_empty: bool = False
) -> None:
    """A `prompt` column (unless an environment supplies prompts) with no empty prompt (unless `allow_empty`: only
    CFG needs a non-empty prompt to contrast with the null one). Standard strings or conversational message lists."""
    if dataset is None or not isinstance(dataset, (Dataset, IterableDataset)) or not require_prompt:
        return
    columns = dataset.column_names
    if columns is not None and "prompt" not in columns:
        raise ValueError(
            f"{name} has no `prompt` column (its columns: {columns}). Rename the column holding the prompts to "
            "`prompt` (for example `dataset.rename_column('question', 'prompt')`)."
        )
    if not isinstance(dataset, Dataset) or allow_empty:
        return  # a stream cannot be scanned up front
    for index, prompt in enumerate(dataset["prompt"]):
        text = prompt if isinstance(prompt, str) else " ".join(_contents(prompt))
        if not text.strip():
            raise ValueError(
                f"{name} row {index} has an empty prompt. CFG contrasts the prompt with an empty one, so an empty "
                "prompt teaches nothing; remove such rows (e.g. `dataset.filter(lambda r: r['prompt'])`)."
            )


# Dataset columns that carry images to a vision-language model (TRL's names for them).
IMAGE_COLUMNS = ("image", "images")


def check_distillation_inputs(datasets, environment_factory=None) -> None:
    """Refuse what CFG distillation cannot handle, before any model loads.

    - An environment renders each prompt with its own tool schema, so no single null context is "rendered like the
      prompts", and the prompts themselves may come from the environment rather than a `prompt` column.
    - Images: the teacher runs on token ids only and never sees `pixel_values`, so it would distil a text-only
      guess of the image-conditioned distribution.
    """
    if environment_factory is not None:
        raise ValueError(
            "CFG distillation does not support environment_factory: each environment renders its prompts with its own "
            "tools, so there is no single unconditional context to contrast them with. Set distill_coef=0 (the "
            "diversity reward works with environments), or drop environment_factory."
        )
    for dataset in datasets:
        columns = getattr(dataset, "column_names", None) or []
        for column in IMAGE_COLUMNS:
            if column in columns:
                raise ValueError(
                    f"The dataset has an `{column}` column, but the CFG teacher sees token ids only, never the "
                    "images (`pixel_values`), so it cannot distil an image-conditioned model. Set distill_coef=0 "
                    f"for image data (the diversity reward still applies), or remove the `{column}` column."
                )


def check_chat_template(dataset, tokenizer, name: str = "train_dataset") -> None:
    """Conversational prompts need a tokenizer that can render them."""
    if not isinstance(dataset, Dataset) or len(dataset) == 0:
        return
    if is_conversational(dataset[0]) and getattr(tokenizer, "chat_template", None) is None:
        raise ValueError(
            f"{name} holds conversational prompts (lists of messages) but the tokenizer has no chat template. Use "
            "an instruct model's tokenizer, set `tokenizer.chat_template`, or pass the prompts as plain strings."
        )


def _contents(messages) -> list[str]:
    parts = []
    for message in messages or []:
        content = message.get("content", "") if isinstance(message, dict) else ""
        if isinstance(content, list):
            content = " ".join(block.get("text", "") for block in content if isinstance(block, dict))
        parts.append(content or "")
    return parts
