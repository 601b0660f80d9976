"""Guidance beyond plain CFG, shared by the trainer's teacher and the toolkit's `generate`: the specification and its
parser (`spec.py`), the arithmetic (`arithmetic.py`), the negative contexts of a prompt (`contexts.py`) and the
early-layer readout (`readout.py`)."""

from trl_diversity.guidance.arithmetic import combine, unguided_before
from trl_diversity.guidance.spec import (
    GuidanceSpec,
    Negative,
    check_layers,
    parse_guidance,
    plain_cfg,
    resolve_guidance,
)

__all__ = [
    "GuidanceSpec",
    "Negative",
    "check_layers",
    "combine",
    "parse_guidance",
    "plain_cfg",
    "resolve_guidance",
    "unguided_before",
]
