"""What the sub-commands share: a parser that fails in one line, "did you mean" suggestions, and checks of model
paths that run before anything heavy (torch, transformers, a model) is imported.

Everything here imports only the standard library and `trl_diversity.defaults`, so a mistyped flag or a wrong path
is reported in a fraction of a second.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Iterable
from pathlib import Path

from trl_diversity.defaults import (
    DEFAULT_EMBEDDER_NAMES,
    default_embedder_path,
    default_model_path_if_converted,
    is_default_model,
    smollm2_gguf_path,
)
from trl_diversity.errors import UserError, closest, did_you_mean

# What a model argument may be, for the messages.
MODEL_KINDS = "a checkpoint folder, a LoRA adapter folder, a hub id, or `default`"


def unknown_arguments_message(unknown: list[str], options: Iterable[str]) -> str:
    """One line naming the unknown flags (or stray values) and the closest valid flag of each."""
    flags = [token.split("=", 1)[0] for token in unknown if token.startswith("-")]
    if not flags:
        return f"unexpected argument(s) {' '.join(unknown)}"
    # Compare names without dashes, and with underscores, so that `--diversity-coeff` finds `--diversity_coef`.
    names = {option.lstrip("-").replace("-", "_") for option in options if option.startswith("--")}
    parts = [f"`{flag}`{did_you_mean(flag.lstrip('-').replace('-', '_'), names, prefix='--')}" for flag in flags]
    return f"unknown flag{'s' if len(parts) > 1 else ''} " + ", ".join(parts)


def with_help_hint(message: str, prog: str) -> str:
    """`message`, then where to read the arguments: argparse's errors name a flag but not the valid ones."""
    return f"{message}{'' if message.endswith(('.', '?')) else '.'} See `{prog} --help`."


def find_unknown_flags(tokens: list[str], options: Iterable[str]) -> list[str]:
    """The tokens that look like flags but name no option.

    Checked before parsing, so that a misspelt flag is what the user hears about, rather than a consequence of it
    ("the following arguments are required: --output" when `--outptu` was typed). Our parsers take no
    abbreviations (`allow_abbrev=False`): argparse would read `--max_step 3` as `--max_steps 3`, but also a
    half-typed flag as whichever option it happens to prefix.
    """
    options = set(options)
    unknown = []
    for token in tokens:
        if token == "--":
            break  # everything after is positional
        if not token.startswith("--") or len(token) < 3:
            continue  # values, negative numbers and short options
        if token.split("=", 1)[0] not in options:
            unknown.append(token)
    return unknown


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Appends "(default: X)" where it tells something: not to required arguments, switches, or a None default
    (whose meaning the help text gives)."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        # Identity, not equality: a default of 0 (a seed) is worth showing, and 0 == False.
        hidden = default is None or default is False or default == argparse.SUPPRESS
        if action.required or not action.option_strings or hidden or "%(default)" in text:
            return text
        return f"{text} (default: {'empty' if default == '' else '%(default)s'})"


class CommandParser(argparse.ArgumentParser):
    """An `argparse` parser whose errors are one-line `UserError`s (no usage dump) and whose help shows defaults."""

    def __init__(self, **kwargs):
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(**kwargs)

    def error(self, message: str):
        raise UserError(with_help_hint(message, self.prog))

    def parse_args(self, args=None, namespace=None):
        unknown = find_unknown_flags(list(args or []), self._option_string_actions)
        if unknown:
            self.error(unknown_arguments_message(unknown, self._option_string_actions))
        parsed, unknown = self.parse_known_args(args, namespace)
        if unknown:
            self.error(unknown_arguments_message(unknown, self._option_string_actions))
        return parsed


# ---------------------------------------------------------------------------------------------------------------------
# Model paths


def looks_like_path(name: str) -> bool:
    """Whether `name` is meant as a local path rather than a hub id (`repo` or `namespace/repo`).

    Explicit path syntax, more than one folder level, or a first component that is a local folder
    (`outputs/quality` when `outputs/` exists: a user naming a hub namespace that shadows a local folder is rarer
    than one mistyping the run name).
    """
    if name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1 or name.endswith("/"):
        return True
    return "/" in name and Path(name.split("/", 1)[0]).is_dir()


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("0", "", "false", "no")


def check_model(name: str | None, flag: str, *, adapter: bool = True, base_given: bool = False) -> None:
    """Raise a `UserError` naming `flag` when `name` cannot be a model: a missing or non-model path, a hub id with
    the hub offline and no cached copy, or a missing default-model package. Nothing is loaded.

    `adapter`: whether a LoRA adapter folder is expected to work here; its base model is then checked too, unless
    `base_given` (an explicit base overrides the one in the adapter's config).
    """
    if is_default_model(name):
        if default_model_path_if_converted() is None:
            smollm2_gguf_path()  # raises MissingDefaultModelError, with the install command, if the package is missing
        return
    kinds = MODEL_KINDS if adapter else "a checkpoint folder, a hub id, or `default`"
    folder = _check_local(name, flag, kinds, ("config.json", "adapter_config.json"))
    adapter_config = None if folder is None else folder / "adapter_config.json"
    if adapter and not base_given and adapter_config is not None and adapter_config.is_file():
        base = json.loads(adapter_config.read_text()).get("base_model_name_or_path")
        if base and not is_default_model(base) and looks_like_path(base) and not Path(base).is_dir():
            raise UserError(
                f"{flag} {name} is a LoRA adapter whose base model {base} does not exist; name its base with --base "
                "(a folder, a hub id or `default`)."
            )


def check_embedder(name: str | None, flag: str) -> None:
    """Like `check_model`, for a sentence-transformers model (`None` or `default`: the bundled MiniLM)."""
    if name is None or name.lower() in DEFAULT_EMBEDDER_NAMES:
        default_embedder_path()  # raises MissingDefaultModelError if its package is missing
        return
    _check_local(
        name, flag, "a sentence-transformers model folder or hub id, or `default`", ("modules.json", "config.json")
    )


def _check_local(name: str, flag: str, kinds: str, markers: tuple[str, ...]) -> Path | None:
    """The folder `name` names (checked to hold one of `markers`), or None for a hub id that may load."""
    path = Path(name).expanduser()
    if path.is_file():
        raise UserError(f"{flag} {name} is a file; pass the folder that holds its {markers[0]} ({kinds}).")
    if path.is_dir():
        if not any((path / marker).is_file() for marker in markers):
            raise UserError(
                f"{flag} {name} holds no {' or '.join(markers)}, so it is not a model folder; pass {kinds}."
            )
        return path
    if looks_like_path(name):
        hint = closest(path.name, siblings(path))
        fix = f"did you mean {path.parent / hint}? Else pass {kinds}" if hint else f"pass {kinds}"
        raise UserError(f"{flag} {name} does not exist; {fix}.")
    if hub_offline() and not _in_hub_cache(name, markers):
        raise UserError(
            f"{flag} {name} is not a local folder, and the hub is offline (HF_HUB_OFFLINE) with no cached copy of "
            f"it; pass {kinds}, or unset HF_HUB_OFFLINE to download it."
        )
    return None


def check_new_output(path: str, flag: str, overwrite_flag: str | None) -> None:
    """Refuse an existing output path unless overwriting was asked for (`overwrite_flag` names how)."""
    if Path(path).exists():
        fix = f"choose another {flag}, or pass {overwrite_flag} to replace it" if overwrite_flag else "remove it"
        raise UserError(f"{flag} {path} already exists; {fix}.")


def check_file(path: str, flag: str, what: str) -> None:
    if not Path(path).is_file():
        hint = closest(Path(path).name, siblings(Path(path)))
        suggestion = f" Did you mean {Path(path).parent / hint}?" if hint else ""
        raise UserError(f"{flag} {path} does not exist; pass {what}.{suggestion}")


def siblings(path: Path) -> list[str]:
    """Names in the nearest existing parent folder of `path`, for a "did you mean" on a mistyped path."""
    parent = path.parent
    try:
        return [p.name for p in parent.iterdir()] if parent.is_dir() else []
    except OSError:
        return []


def _in_hub_cache(repo_id: str, files: tuple[str, ...]) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return True  # cannot tell: let the loader decide
    try:
        return any(isinstance(try_to_load_from_cache(repo_id, file), str) for file in files)
    except ValueError:  # not even a valid repo id
        return False
