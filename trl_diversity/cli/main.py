"""The `trl-diversity` command line: `trl-diversity <command> [arguments]`.

Runnable as `python -m trl_diversity.cli.main`, so `accelerate launch -m trl_diversity.cli.main train recipe.yaml` works.
"""

from __future__ import annotations

import importlib
import sys

# command -> (module, function)
COMMANDS = {
    "train": ("trl_diversity.cli.train", "main"),
    "generate": ("trl_diversity.cli.commands", "generate"),
    "evaluate": ("trl_diversity.cli.commands", "evaluate"),
    "merge": ("trl_diversity.cli.commands", "merge"),
    "sweep": ("trl_diversity.cli.commands", "sweep"),
}

USAGE = """usage: trl-diversity <command> [arguments]

commands:
  train [recipe.yaml] [--flag value ...]   finetune with diversity-rewarded CFG distillation
                                           (no arguments: the default offline job)
  generate --model M --output F.jsonl      sample k completions per prompt, with or without CFG
  evaluate F.jsonl [...] --output R.json   quality, diversity and cost per model, with 95% CIs
  merge A B --weight W --output DIR        (1 - W) * A + W * B, for checkpoints or LoRA adapters
  sweep --quality_model A --diversity_model B --output DIR
                                           CFG sweep vs. merge sweep: table, fronts, hypervolume, plot

Run `trl-diversity <command> --help` for the arguments of a command."""


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        sys.exit(f"trl-diversity: unknown command {command!r}.\n\n{USAGE}")
    module, function = COMMANDS[command]
    getattr(importlib.import_module(module), function)(rest)
