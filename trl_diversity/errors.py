"""The exception type for mistakes in what the user asked for, as opposed to bugs, and the "did you mean" helper
its messages use.

The command line prints a `UserError` as one line on stderr (the problem and its fix) and exits with status 2; any
other exception keeps its traceback. It is a `ValueError`, so Python callers that catch `ValueError` for bad
arguments keep working.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(ValueError):
    """A wrong path, value, flag or recipe key: the message names the problem and the fix."""


def closest(word: str, candidates: Iterable[str]) -> str | None:
    """The candidate `word` was most likely meant to be (a typo away), or None."""
    matches = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return matches[0] if matches else None


def did_you_mean(word: str, candidates: Iterable[str], prefix: str = "") -> str:
    """'; did you mean `<prefix><candidate>`?' when a candidate is close to `word`, else ''."""
    match = closest(word, candidates)
    return f"; did you mean `{prefix}{match}`?" if match else ""
