"""The `trl-diversity` command line: `trl-diversity [--debug] <command> [arguments]`.

Runnable as `python -m trl_diversity.cli`, so `accelerate launch -m trl_diversity.cli train recipe.yaml` works.

A mistake in what the user asked for (a `UserError`: wrong path, value, flag or recipe key) is one line on stderr
naming the problem and the fix, with exit status 2; `--debug` before the command, or `TRL_DIVERSITY_DEBUG=1`, shows
its traceback instead. Anything else is a bug and keeps its traceback. An interrupted command exits with the shell's
status for its signal: 130 for SIGINT (Ctrl-C), 143 for SIGTERM (`train` saves a checkpoint first).
"""

from __future__ import annotations

import importlib
import os
import signal
import sys

from trl_diversity.errors import UserError, closest

# command -> (module, function)
COMMANDS = {
    "train": ("trl_diversity.cli.train", "main"),
    "generate": ("trl_diversity.cli.commands", "generate"),
    "evaluate": ("trl_diversity.cli.commands", "evaluate"),
    "merge": ("trl_diversity.cli.commands", "merge"),
    "sweep": ("trl_diversity.cli.commands", "sweep"),
    "dial": ("trl_diversity.cli.commands", "dial"),
}

USAGE = """usage: trl-diversity [--debug] <command> [arguments]

commands:
  train [recipe.yaml] [--flag value ...]   finetune with diversity-rewarded CFG distillation
                                           (no arguments: the default offline job)
  generate --model M --output F.jsonl      sample k completions per prompt, with or without CFG
  evaluate F.jsonl [...] --output R.json   quality, diversity and cost per model, with 95% CIs
  merge A B --weight W --output DIR        (1 - W) * A + W * B, for checkpoints or LoRA adapters
  sweep --quality_model A --diversity_model B --output DIR
                                           CFG sweep vs. merge sweep: table, fronts, hypervolume, plot
  dial --quality_model A --diversity_model B --target adherence=0.55 --output DIR
                                           the merge weight that reaches a target, found by bisection

Run `trl-diversity <command> --help` for the arguments of a command.
--debug (or TRL_DIVERSITY_DEBUG=1) shows the traceback of an error instead of its one-line message."""

DEBUG_ENV = "TRL_DIVERSITY_DEBUG"


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    # `--debug` goes before the command: after `train` it would be TrainingArguments' own `--debug` option.
    debug = os.environ.get(DEBUG_ENV, "0").lower() not in ("0", "", "false", "no")
    while argv and argv[0] == "--debug":
        debug, argv = True, argv[1:]
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return
    command, rest = argv[0], argv[1:]
    try:
        if command not in COMMANDS:
            match = closest(command, COMMANDS)
            hint = f"did you mean `{match}`? " if match else ""
            raise UserError(f"unknown command {command!r}; {hint}The commands: {', '.join(COMMANDS)}.")
        module, function = COMMANDS[command]
        getattr(importlib.import_module(module), function)(rest)
    except UserError as error:
        if debug:
            raise
        print(f"trl-diversity {command}: error: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        # Ctrl-C outside training (which checkpoints and exits with 130 itself): loading, generating, evaluating.
        if debug:
            raise
        print(f"trl-diversity {command}: interrupted", file=sys.stderr)
        sys.exit(128 + signal.SIGINT)
