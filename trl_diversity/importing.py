"""Import the object a `module:attribute` name stands for (a group reward, a reward function), from the working
directory or the Python path, with every failure a one-line `UserError`.

`python -m` and the interactive interpreter put the working directory on `sys.path`; a console script (such as
`trl-diversity`) and `python path/to/script.py` do not. The README promises that a module in the working directory
works, so it is searched too, last: an installed module of the same name keeps precedence.

Standard library only, so the command line checks such a name before torch is imported.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import sys

from trl_diversity.errors import UserError

# `module:attribute`, both possibly dotted.
IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def import_object(spec: str, field: str):
    """The object `module:attribute` names (`attribute` may be dotted). `field` names the argument or config field
    that gave the name, for the messages. Every failure, the module's own errors included, is a `UserError`."""
    module_name, _, attribute = spec.partition(":")
    try:
        value = _import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name is not None and error.name.split(".")[0] != module_name.split(".")[0]:
            raise UserError(  # the module was found, but something it imports is not installed
                f"{field} {spec!r}: importing module {module_name!r} failed: {error}. Install what it needs."
            ) from error
        raise UserError(
            f"{field} {spec!r}: cannot import module {module_name!r} ({error}). Check the name, and that its folder "
            f"is the working directory ({os.getcwd()}) or on PYTHONPATH."
        ) from error
    except SyntaxError as error:
        where = f"{error.filename}, line {error.lineno}" if error.filename else f"line {error.lineno}"
        raise UserError(
            f"{field} {spec!r}: module {module_name!r} has a SyntaxError ({where}): {error.msg}."
        ) from error
    except Exception as error:  # the module raised while it was imported
        raise UserError(
            f"{field} {spec!r}: importing module {module_name!r} raised {type(error).__name__}: {_one_line(error)}"
        ) from error
    for part in attribute.split("."):
        if not hasattr(value, part):
            raise UserError(f"{field} {spec!r}: module {module_name!r} has no attribute {attribute!r}.")
        value = getattr(value, part)
    return value


def import_callable(spec: str, field: str, what: str):
    """`import_object`, checked to be a callable that is not a class (`what` names what it should be)."""
    value = import_object(spec, field)
    if inspect.isclass(value):
        raise UserError(
            f"{field} {spec!r} is a class. Point to a function, or to an instance made at module level "
            f"(e.g. `MY_REWARD = {value.__name__}(...)`)."
        )
    if not callable(value):
        raise UserError(f"{field} {spec!r} is a {type(value).__name__}, not a callable {what}.")
    return value


def _import_module(module_name: str):
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        cwd = os.getcwd()
        if error.name != module_name.split(".")[0] or cwd in {os.path.abspath(p or ".") for p in sys.path}:
            raise
        sys.path.append(cwd)
        importlib.invalidate_caches()
        return importlib.import_module(module_name)


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split()) or "(no message)"
