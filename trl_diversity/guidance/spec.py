"""A guidance specification: which negative contexts the teacher is guided away from, how hard, and from when.

Guidance is logit arithmetic over contexts of one frozen model (METHOD.md, "Guided teachers beyond plain CFG"):

    log pi(. | y<t)  =  log p(. | c, y<t) + sum_j w_j [ log p(. | c, y<t) - log p(. | n_j, y<t) ]  + const

with `c` the prompt and `n_j` the negatives. One line of text writes it, the same on the command line, in a YAML
recipe and in Python. Terms are joined by `+`, each `WEIGHT*NEGATIVE`; an optional `from M` at the end is the first
generated position that is guided (interval guidance: positions 0 .. M-1 are sampled unguided):

    2*null                                   plain CFG at gamma 3 (w = gamma - 1) against the null context
    2*null from 4                            the same, leaving the first 4 generated tokens unguided
    1*"{prompt} Give the most common, predictable answer."      a per-prompt negative ({prompt} is the prompt)
    1*null + 0.5*"{prompt} Answer in the usual way."            several negatives, each with its weight
    1*layer:8                                the same model read out after its 8th layer (autoguidance / DoLa-style)

`null` is the unconditional prompt (`unconditional_prompt`, "" by default); a quoted text without `{prompt}` is a
fixed negative prompt. Every weight 0 (or plain CFG at gamma 1) is the unguided model itself.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from trl_diversity.errors import UserError

PROMPT_SLOT = "{prompt}"
SYNTAX = 'terms "WEIGHT*NEGATIVE" joined by "+" (NEGATIVE: null, layer:N or a quoted text), then optionally "from M"'


@dataclass(frozen=True)
class Negative:
    """One negative branch: a context (`text`, rendered like the prompts; `{prompt}` is replaced by the prompt) or,
    with `layer` set, the conditional context read out after that many layers."""

    weight: float
    text: str | None = None  # None: the null context (the unconditional prompt)
    layer: int | None = None

    @property
    def is_layer(self) -> bool:
        return self.layer is not None

    @property
    def per_prompt(self) -> bool:
        return self.text is not None and PROMPT_SLOT in self.text

    def context(self, prompt: str, null_prompt: str) -> str:
        """The text of this negative's context for `prompt` (not for a layer negative)."""
        if self.text is None:
            return null_prompt
        return self.text.replace(PROMPT_SLOT, prompt)

    def __str__(self) -> str:
        if self.is_layer:
            target = f"layer:{self.layer}"
        elif self.text is None:
            target = "null"
        else:
            target = '"' + self.text.replace('"', '\\"') + '"'
        return f"{self.weight:g}*{target}"


@dataclass(frozen=True)
class GuidanceSpec:
    """The negatives and the first guided position. `str(spec)` writes it back in the syntax `parse_guidance` reads."""

    negatives: tuple[Negative, ...]
    start: int = 0

    @property
    def context_negatives(self) -> tuple[Negative, ...]:
        """The negatives that are contexts of their own (each costs a forward pass per token)."""
        return tuple(n for n in self.negatives if not n.is_layer)

    @property
    def layer_negatives(self) -> tuple[Negative, ...]:
        return tuple(n for n in self.negatives if n.is_layer)

    @property
    def is_identity(self) -> bool:
        """Whether this teacher is the unguided model itself (every weight 0)."""
        return all(n.weight == 0 for n in self.negatives)

    @property
    def is_plain_cfg(self) -> bool:
        """One null negative, guided from the first token: plain CFG at gamma = 1 + w."""
        return (
            self.start == 0
            and len(self.negatives) == 1
            and self.negatives[0].text is None
            and not (self.negatives[0].is_layer)
        )

    def forward_passes_per_token(self) -> int:
        """Forward passes of the model per generated token when sampling this teacher (a layer negative reads the
        conditional pass and costs none of its own)."""
        return 1 + (0 if self.is_identity else len(self.context_negatives))

    def __str__(self) -> str:
        text = " + ".join(str(n) for n in self.negatives)
        return f"{text} from {self.start}" if self.start else text


def plain_cfg(guidance_scale: float) -> GuidanceSpec:
    """Plain CFG at `guidance_scale` (the paper's gamma) against the null context: one negative, w = gamma - 1."""
    return GuidanceSpec((Negative(weight=guidance_scale - 1.0),))


_NUMBER = r"[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?"
_TERM = re.compile(
    rf"""\s*(?P<weight>{_NUMBER})\s*\*\s*
    (?:(?P<null>null)\b|layer:(?P<layer>[0-9]+)\b|"(?P<quoted>(?:[^"\\]|\\.)*)"|'(?P<single>(?:[^'\\]|\\.)*)')\s*""",
    re.VERBOSE,
)
_FROM = re.compile(r"\s*from\s+(?P<start>[0-9]+)\s*$")


def parse_guidance(text: str) -> GuidanceSpec:
    """Parse a guidance specification (see the module's docstring), refusing any invalid one in one line."""
    if not isinstance(text, str) or not text.strip():
        raise UserError(f"guidance is empty: write {SYNTAX}, e.g. '2*null' (plain CFG at gamma 3).")
    body, start = text, 0
    tail = _FROM.search(text)
    if tail:
        body, start = text[: tail.start()], int(tail.group("start"))
    negatives, position = [], 0
    while True:
        match = _TERM.match(body, position)
        if match is None:
            raise UserError(
                f"guidance {text!r} cannot be read at {body[position:].strip()[:30]!r}: write {SYNTAX}, e.g. "
                "'2*null from 4' or '1*\"{prompt} Give the most common answer.\"'."
            )
        negatives.append(_negative(match, text))
        position = match.end()
        if position == len(body):
            break
        if body[position] != "+":
            raise UserError(f"guidance {text!r}: expected '+' between terms at {body[position:][:30]!r}; {SYNTAX}.")
        position += 1
    spec = GuidanceSpec(tuple(negatives), start)
    check_guidance(spec, text)
    return spec


def _negative(match: re.Match, text: str) -> Negative:
    weight = float(match.group("weight"))
    if match.group("null"):
        return Negative(weight)
    if match.group("layer") is not None:
        return Negative(weight, layer=int(match.group("layer")))
    quoted = match.group("quoted") if match.group("quoted") is not None else match.group("single")
    return Negative(weight, text=re.sub(r"\\(.)", r"\1", quoted))


def check_guidance(spec: GuidanceSpec, text: str | None = None) -> None:
    """Refuse, in one line, a specification that is not a guided teacher of the prompt."""
    name = f"guidance {text!r}" if text is not None else f"guidance {str(spec)!r}"
    if not spec.negatives:
        raise UserError(f"{name} has no negative: write {SYNTAX}.")
    for negative in spec.negatives:
        if not math.isfinite(negative.weight):
            raise UserError(f"{name}: the weight of {negative} must be a finite number.")
        if negative.is_layer and negative.layer < 1:
            raise UserError(f"{name}: layer:{negative.layer} reads out no layer; use layer:N with N >= 1.")
        if negative.text is not None and negative.text.count(PROMPT_SLOT) > 1:
            raise UserError(f"{name}: a negative text may hold {PROMPT_SLOT} once, not {negative.text.count('{')}.")
    seen = set()
    for negative in spec.negatives:
        key = (negative.text, negative.layer)
        if key in seen:
            raise UserError(f"{name} names the negative {str(negative).split('*', 1)[1]} twice: add their weights.")
        seen.add(key)


def check_layers(spec: GuidanceSpec, num_layers: int, model_name: str = "the model") -> None:
    """Refuse a layer negative at or beyond the model's depth (layer N = num_layers is the model itself)."""
    for negative in spec.layer_negatives:
        if negative.layer >= num_layers:
            raise UserError(
                f"guidance {str(spec)!r}: layer:{negative.layer} is not an early layer of {model_name}, which has "
                f"{num_layers} layers; use layer:N with 1 <= N < {num_layers}."
            )


def resolve_guidance(guidance: str | None, guidance_scale: float) -> GuidanceSpec:
    """The teacher's specification: `guidance` when given, else plain CFG at `guidance_scale` (today's meaning)."""
    return plain_cfg(guidance_scale) if guidance is None else parse_guidance(guidance)
