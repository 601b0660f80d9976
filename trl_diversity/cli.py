"""The `trl-diversity` command line: `trl-diversity <command> [arguments]`.

Runnable as `python -m trl_diversity.cli`, so `accelerate launch -m trl_diversity.cli train recipe.yaml` works.
"""

from __future__ import annotations

import sys

COMMANDS = {
    "train": "trl_diversity.train",
}

USAGE = """usage: trl-diversity <command> [arguments]

commands:
  train [recipe.yaml] [--flag value ...]   finetune with diversity-rewarded CFG distillation
                                           (no arguments: the default offline job)

Run `trl-diversity <command> --help` for the arguments of a command."""


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        sys.exit(f"trl-diversity: unknown command {command!r}.\n\n{USAGE}")
    import importlib

    importlib.import_module(COMMANDS[command]).main(rest)


if __name__ == "__main__":
    main()
