"""Tiny models and tokenizers built in the tests: no downloads, seconds to train."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    Gemma2Config,
    GPT2Config,
    GraniteConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

from trl_diversity.data import load_prompts

CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|> {{ message['content'] }} <eos> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)
SPECIAL_TOKENS = ["<pad>", "<unk>", "<bos>", "<eos>", "<|user|>", "<|assistant|>", "<|system|>"]


def build_tokenizer(extra_words: tuple[str, ...] = ()) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over the bundled prompts' words, with a minimal chat template."""
    words = set(extra_words)
    for split in ("train", "eval"):
        for prompt in load_prompts(split)["prompt"]:
            words.update(re.findall(r"\w+|[^\w\s]", prompt.lower()))
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + sorted(words))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    backend.decoder = decoders.WordPiece(prefix="##")  # joins word-level tokens with spaces
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<bos>",
        eos_token="<eos>",
        additional_special_tokens=SPECIAL_TOKENS[4:],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_model(vocab_size: int, seed: int = 0, hidden_size: int = 32, layers: int = 2) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=2,
        eos_token_id=3,
        pad_token_id=0,
        tie_word_embeddings=False,
        # Larger than the usual 0.02 so that the random model has peaked next-token distributions and the
        # conditional and unconditional contexts differ visibly (CFG then has something to amplify).
        initializer_range=0.1,
    )
    return LlamaForCausalLM(config)


def save_tiny_checkpoint(folder: Path, seed: int = 0, hidden_size: int = 32) -> Path:
    tokenizer = build_tokenizer()
    model = build_model(len(tokenizer), seed=seed, hidden_size=hidden_size)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


# Tiny models of other families than Llama, built from configs (tests/trainer/test_model_families.py).
SIZES = dict(bos_token_id=2, eos_token_id=3, pad_token_id=0, tie_word_embeddings=False, initializer_range=0.1)


LLAMA_LIKE = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
)


FAMILIES = {
    "qwen2": lambda vocab: Qwen2Config(vocab_size=vocab, **LLAMA_LIKE, **SIZES),
    "gemma2": lambda vocab: Gemma2Config(
        vocab_size=vocab, head_dim=8, final_logit_softcapping=None, sliding_window=64, **LLAMA_LIKE, **SIZES
    ),
    "gpt2": lambda vocab: GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=4, n_positions=256, **SIZES),
    "granite": lambda vocab: GraniteConfig(vocab_size=vocab, logits_scaling=4.0, **LLAMA_LIKE, **SIZES),
}


def build(family: str, seed: int = 0):
    from transformers import AutoModelForCausalLM

    tokenizer = build_tokenizer()
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(FAMILIES[family](len(tokenizer)))
    return model.eval(), tokenizer
