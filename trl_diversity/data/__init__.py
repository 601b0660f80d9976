"""The bundled creative-writing prompts, written by the project, as `datasets.Dataset`s.

`load_prompts("train")` gives a `prompt` column of plain strings (TRL's standard format);
`load_prompts("eval", conversational=True)` gives `prompt` as a one-message conversation (TRL's conversational
format), which the trainer renders with the tokenizer's chat template. `form` and `topic` columns come along.

`open` is a second evaluation set of another kind: 60 short, open questions with many valid answers (name something,
tell a joke, recommend, pick, invent). It was written before any model was judged on it and is kept out of every
choice of settings (issue #23, goal e).
"""

from __future__ import annotations

from pathlib import Path

from datasets import Dataset

DATA_DIR = Path(__file__).resolve().parent
SPLITS = ("train", "eval", "open")


def prompts_file(split: str) -> Path:
    if split not in SPLITS:
        raise ValueError(f"Unknown prompt split {split!r}; choose one of {', '.join(SPLITS)}.")
    return DATA_DIR / f"prompts_{split}.jsonl"


def load_prompts(split: str = "train", conversational: bool = False, limit: int | None = None) -> Dataset:
    """Load a bundled prompt split; `limit` keeps the first prompts (the files interleave the forms)."""
    # Dataset.from_json, unlike load_dataset("json", ...), reads the file without asking a hub for a loading script
    dataset = Dataset.from_json(str(prompts_file(split)))
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    if conversational:
        dataset = dataset.map(lambda row: {"prompt": [{"role": "user", "content": row["prompt"]}]})
    return dataset
