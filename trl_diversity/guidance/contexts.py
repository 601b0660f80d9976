"""The context of a negative branch for one prompt, in the prompt's own format (plain text or a conversation).

- the null context and a fixed text: one user message holding that text (plain text: the text itself), as the
  teacher's unconditional context has always been rendered;
- a per-prompt text (`{prompt}` in it): the prompt's own conversation with its last user message replaced by the text,
  `{prompt}` standing for that message, so the system message and earlier turns stay (plain text: the text with
  `{prompt}` replaced by the prompt).

Each caller tokenizes the result as it tokenizes its prompts (the trainer with TRL's rendering, `generate` with the
chat template).
"""

from __future__ import annotations

import copy

from trl_diversity.guidance.spec import Negative


def negative_context(negative: Negative, prompt, null_prompt: str):
    """The context of `negative` for `prompt` (a string, or a list of chat messages)."""
    if isinstance(prompt, str):
        return negative.context(prompt, null_prompt)
    if not negative.per_prompt:
        return [{"role": "user", "content": negative.context("", null_prompt)}]
    messages = copy.deepcopy(list(prompt))
    for message in reversed(messages):
        if message.get("role") == "user":
            message["content"] = negative.context(_text(message.get("content", "")), null_prompt)
            return messages
    raise ValueError("A per-prompt negative needs a user message in each conversational prompt; this one has none.")


def _text(content) -> str:
    if isinstance(content, list):  # multimodal content blocks
        return " ".join(block.get("text", "") for block in content if isinstance(block, dict))
    return content or ""
