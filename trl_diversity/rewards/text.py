"""The text of a completion as GRPO hands it to reward functions: a string, or (conversational) a list of messages."""

from __future__ import annotations


def completion_text(completion) -> str:
    """The text of a completion: a string, or the contents of its messages joined by newlines."""
    if isinstance(completion, str):
        return completion
    parts = []
    for message in completion:
        content = message.get("content", "")
        if isinstance(content, list):  # content blocks
            content = " ".join(block.get("text", "") for block in content if isinstance(block, dict))
        parts.append(content or "")
    return "\n".join(parts)
