"""Whether a `teacher_model` name points at something loadable, checked before any model loads."""

from __future__ import annotations

import os


def hub_is_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")


def looks_like_a_path(name: str) -> bool:
    """Explicit path syntax, or more folder levels than a hub id (`org/name`) has."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep != "/" and os.sep in name


def is_in_hub_cache(name: str) -> bool:
    """A hub id whose config is in the local hub cache (usable with the hub offline)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except ValueError:  # not a valid repo id
        return False


def teacher_model_is_missing(name: str) -> bool:
    """True when `name` cannot load: a path that is not a folder, or, with the hub offline, neither a local folder
    nor a hub id in the local cache. With the hub reachable a hub id is left to `from_pretrained`."""
    if os.path.isdir(os.path.expanduser(name)):
        return False
    if looks_like_a_path(name):
        return True
    return hub_is_offline() and not is_in_hub_cache(name)
