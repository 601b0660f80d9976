"""The project's documentation as the tests read it: the README and the pages under docs/."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
GUIDE = ROOT / "docs" / "guide"


def guide(page: str) -> str:
    """The text of a user-guide page, e.g. `guide("method.md")`."""
    return (GUIDE / page).read_text()


def section(text: str, heading: str) -> str:
    """From `heading` to the next heading of the same or a higher level."""
    level = len(heading) - len(heading.lstrip("#"))
    start = text.index(heading)
    ends = [text.find("\n" + "#" * n + " ", start + 1) for n in range(1, level + 1)]
    ends = [end for end in ends if end != -1]
    return text[start : min(ends)] if ends else text[start:]
