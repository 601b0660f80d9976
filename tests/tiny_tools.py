"""A tiny tool-calling setup for TRL's `tools`: a tokenizer with Qwen3's chat template (one that TRL knows how to
parse tool calls from), a tool, and a generation wrapper that makes a tiny random model call it.

TRL's tool loop needs three things a tiny word-level tokenizer lacks: a chat template that renders tool calls and
tool results, a response parser for it (`add_response_schema` knows Qwen3's template), and decoding that gives the
text back exactly (the parser anchors on `<|im_start|>assistant\\n` and reads the call as JSON). So this tokenizer
keeps every whitespace character as a token of its own and joins tokens without spaces. A random model never writes
a tool call, so `calls_a_tool` replaces every other first-turn completion with one; what follows the tool's result is
the model's own sample.
"""

from __future__ import annotations

import re

from jinja2 import Template
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast
from transformers.utils import get_json_schema
from trl.chat_template_utils import qwen3_chat_template

from trl_diversity.data import load_prompts

SPECIAL_TOKENS = [
    "<pad>",
    "<unk>",
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<tool_call>",
    "</tool_call>",
    "<tool_response>",
    "</tool_response>",
    "<think>",
    "</think>",
]
# The one call the wrapper makes, a single token so that a completion that calls the tool stays short.
TOOL_CALL = '{"name": "multiply", "arguments": {"a": 3, "b": 4}}'
MAX_POSITIONS = 1024  # the tools preamble alone is ~300 tokens


def multiply(a: int, b: int) -> int:
    """Multiplies two integers.

    Args:
        a: The first integer.
        b: The second integer.
    """
    return a * b


TOOLS = [multiply]


def _words(text: str) -> set[str]:
    return set(re.findall(r"\w+|[^\w\s]|\s", text))


def build_tool_tokenizer() -> PreTrainedTokenizerFast:
    """Word-level over the bundled prompts and the template's own text, whitespace kept, decoding exact."""
    words = {" ", "\n"}
    for split in ("train", "eval"):
        for prompt in load_prompts(split)["prompt"]:
            words |= _words(prompt.lower()) | _words(prompt)
    call = {"type": "function", "function": {"name": "multiply", "arguments": {"a": 3, "b": 4}}}
    rendered = Template(qwen3_chat_template).render(
        messages=[
            {"role": "user", "content": "dummy"},
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "name": "multiply", "content": "12"},
        ],
        tools=[get_json_schema(multiply)],
        add_generation_prompt=True,
    )
    for token in [*SPECIAL_TOKENS, TOOL_CALL]:
        rendered = rendered.replace(token, " ")
    words |= _words(rendered)
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + sorted(words - set(SPECIAL_TOKENS)))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"\w+|[^\w\s]|\s"), behavior="isolated")
    backend.decoder = decoders.Fuse()  # tokens joined as they are: the text comes back exactly
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        unk_token="<unk>",
        eos_token="<|im_end|>",
        additional_special_tokens=SPECIAL_TOKENS[2:],
    )
    tokenizer.add_tokens([TOOL_CALL])
    tokenizer.chat_template = qwen3_chat_template
    return tokenizer


def calls_a_tool(generate, tokenizer):
    """Wrap a trainer's `_generate_single_turn`: every other first-turn completion becomes a call of `multiply`
    (TRL then runs the tool, appends its result, masked out by `tool_mask`, and samples the rest). Continuations
    after a tool result are left as sampled."""
    call = tokenizer.convert_tokens_to_ids(["<tool_call>", "\n", TOOL_CALL, "\n", "</tool_call>", "<|im_end|>"])
    response = tokenizer.convert_tokens_to_ids("<tool_response>")

    def wrapped(prompt_ids, *args, **kwargs):
        completion_ids, logprobs = generate(prompt_ids, *args, **kwargs)
        completion_ids = [
            list(call) if i % 2 == 0 and response not in prompt else completion
            for i, (prompt, completion) in enumerate(zip(prompt_ids, completion_ids))
        ]
        return completion_ids, logprobs

    return wrapped
