"""Sampling `k` completions per prompt, with or without CFG, through transformers' own `generate`.

CFG uses transformers' built-in support (`guidance_scale` with `negative_prompt_ids`, i.e.
`UnbatchedClassifierFreeGuidanceLogitsProcessor`): the unconditional branch is the same null context the trainer's
teacher uses, followed by the tokens sampled so far. Two forward passes per generated token instead of one.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase


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


@torch.no_grad()
def sample_completions(
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
    progress: bool = True,
    description: str = "generating",
) -> list[list[str]]:
    """`num_samples` completions for each prompt (one prompt's samples per `generate` call)."""
    if seed is not None:
        torch.manual_seed(seed)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    null_ids = unconditional_ids(tokenizer, null_prompt, chat) if guidance_scale != 1.0 else None
    model.eval()
    device = next(model.parameters()).device
    results = []
    for prompt in tqdm(prompts, desc=description, disable=not progress):
        ids = torch.tensor([render_prompt(tokenizer, prompt, chat)] * num_samples, device=device)
        kwargs = {}
        if null_ids is not None:
            negative = torch.tensor([null_ids] * num_samples, device=device)
            kwargs = {"guidance_scale": guidance_scale, "negative_prompt_ids": negative}
        output = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            do_sample=True,
            temperature=temperature,
            top_k=0,
            top_p=1.0,
            max_new_tokens=max_new_tokens,
            pad_token_id=pad_id,
            **kwargs,
        )
        results.append(tokenizer.batch_decode(output[:, ids.shape[1] :], skip_special_tokens=True))
    return results
