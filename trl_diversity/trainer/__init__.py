"""The training method: `DiversityCFGMixin` (`method.py`) on TRL's GRPO and RLOO trainers (`DiversityCFGTrainer`,
`DiversityCFGRLOOTrainer`, with their configs), and the pure math they use (CFG guidance,
token divergences, GRPO-style loss reduction), the frozen CFG teacher, and the trainer's safety callbacks.

The names are imported on first use, so that the config (and the command line's argument checks) loads without
the trainer's heavier imports.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "DiversityCFGConfig": "trl_diversity.trainer.diversity_cfg_config",
    "DiversityCFGTrainer": "trl_diversity.trainer.diversity_cfg_trainer",
    "DiversityCFGRLOOConfig": "trl_diversity.trainer.diversity_cfg_config",
    "DiversityCFGRLOOTrainer": "trl_diversity.trainer.diversity_cfg_trainer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'trl_diversity.trainer' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
