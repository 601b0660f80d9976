"""The `trl-diversity` command line. `python -m trl_diversity.cli` runs it (so `accelerate launch -m` does too)."""

from trl_diversity.cli.main import main

__all__ = ["main"]
