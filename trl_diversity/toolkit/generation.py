"""Sampling `k` completions per prompt, with or without CFG, through transformers' own `generate`.

CFG uses transformers' built-in support (`guidance_scale` with `negative_prompt_ids`, i.e.
`UnbatchedClassifierFreeGuidanceLogitsProcessor`): the unconditional branch is the same null context the trainer's
teacher uses, followed by the tokens sampled so far. That costs two forward passes per generated token instead of one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from trl_diversity.atomic import write_text_atomic
from trl_diversity.defaults import resolve_model


def render_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str, chat: bool) -> list[int]:
    """Token ids of a prompt: through the chat template (as the trainer does for conversational data) or plain."""
    if chat:
        messages = [{"role": "user", "content": prompt}]
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
        return list(ids["input_ids"])
    return list(tokenizer(prompt)["input_ids"])


def unconditional_ids(tokenizer: PreTrainedTokenizerBase, null_prompt: str, chat: bool) -> list[int]:
    """The null context, rendered like the prompts; never empty (BOS, else EOS, as in training)."""
    ids = render_prompt(tokenizer, null_prompt, chat)
    if not ids:
        ids = [tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id]
    return ids


def load_generation_model(path: str, base: str | None = None, device: str | None = None):
    """A causal LM and its tokenizer from a full checkpoint, or from a LoRA adapter on its base (or `base`)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(resolve_model(path))
    if (folder / "adapter_config.json").is_file():
        from peft import PeftModel

        base = base or json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"]
        base_path = resolve_model(base)
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_path), folder)
        model = model.merge_and_unload()  # plain weights: generation as fast as the base model's
        tokenizer = AutoTokenizer.from_pretrained(
            folder if (folder / "tokenizer_config.json").is_file() else base_path
        )
    else:
        model = AutoModelForCausalLM.from_pretrained(folder)
        tokenizer = AutoTokenizer.from_pretrained(folder)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device).eval(), tokenizer


@torch.no_grad()
def generate_records(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    num_samples: int = 4,
    max_new_tokens: int = 48,
    guidance_scale: float = 1.0,
    null_prompt: str = "",
    chat: bool = True,
    temperature: float = 1.0,
    seed: int | None = 0,
    prompts_per_batch: int = 4,
    label: str = "model",
    progress: bool = True,
) -> Iterator[dict]:
    """Yield one record per completion: prompt, sample index, completion (text and ids), settings and cost."""
    if seed is not None:
        torch.manual_seed(seed)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos_ids = {tokenizer.eos_token_id, *_as_list(model.generation_config.eos_token_id)} - {None}
    null_ids = unconditional_ids(tokenizer, null_prompt, chat) if guidance_scale != 1.0 else None
    device = next(model.parameters()).device
    bar = tqdm(total=len(prompts) * num_samples, desc=label, unit="sample", disable=not progress)
    for start in range(0, len(prompts), prompts_per_batch):
        batch_prompts = prompts[start : start + prompts_per_batch]
        rows = [render_prompt(tokenizer, p, chat) for p in batch_prompts for _ in range(num_samples)]
        width = max(len(r) for r in rows)
        ids = torch.tensor([[pad_id] * (width - len(r)) + r for r in rows], device=device)  # left padding
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
        kwargs = {}
        if null_ids is not None:
            kwargs = {"guidance_scale": guidance_scale, "negative_prompt_ids": torch.tensor([null_ids] * len(rows))}
            kwargs["negative_prompt_ids"] = kwargs["negative_prompt_ids"].to(device)
        started = time.perf_counter()
        output = model.generate(
            input_ids=ids,
            attention_mask=mask,
            do_sample=True,
            temperature=temperature,
            top_k=0,
            top_p=1.0,
            max_new_tokens=max_new_tokens,
            pad_token_id=pad_id,
            **kwargs,
        )
        seconds = time.perf_counter() - started
        completions = [_strip(row.tolist(), eos_ids) for row in output[:, width:]]
        total_tokens = max(sum(len(c) for c in completions), 1)
        for i, completion_ids in enumerate(completions):
            yield {
                "model": label,
                "prompt": batch_prompts[i // num_samples],
                "sample": i % num_samples,
                "completion": tokenizer.decode(completion_ids, skip_special_tokens=True),
                "completion_ids": completion_ids,
                "guidance_scale": guidance_scale,
                "temperature": temperature,
                "max_new_tokens": max_new_tokens,
                "forward_passes_per_token": 2 if null_ids is not None else 1,
                # the batch's time, shared out by token count
                "seconds": seconds * len(completion_ids) / total_tokens,
            }
        bar.update(len(rows))
    bar.close()


def write_jsonl(records, path: str | Path) -> Path:
    """Write records to a JSONL file atomically (temporary name, then rename)."""
    return write_text_atomic(path, "".join(json.dumps(record) + "\n" for record in records))


def read_jsonl(path: str | Path) -> list[dict]:
    with Path(path).open() as f:
        return [json.loads(line) for line in f if line.strip()]


def _as_list(value) -> list:
    return [] if value is None else [value] if isinstance(value, int) else list(value)


def _strip(ids: list[int], eos_ids: set[int]) -> list[int]:
    """Cut a sampled row at its first end-of-sequence token; `generate` pads only after one."""
    for position, token in enumerate(ids):
        if token in eos_ids:
            return ids[:position]
    return ids
