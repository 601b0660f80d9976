"""The rules every report of the experiments judges by, each defined once here and imported by `reproduction_report`
and `compare_finetunes` (issue #33: one rule, not one per report).

- Claim (a): the `beta = 0` model matches a CFG scale when the paired 95% CI of its adherence minus CFG's has its lower
  end above `-ADHERENCE_MARGIN` (non-inferiority at a margin stated before any run of #23 was judged).
- Claim (b): `MIN_DIVERSITY_GAIN` and `MAX_ADHERENCE_LOSS`, each tested on its 95% CI, not on the point estimate: the
  gain is met when the lower end of the relative MiniLM gain's CI is at least +20%; the adherence budget is met when
  the lower end of the relative adherence change's CI is at least -5% (non-inferiority at a 5% margin, as (a) is at
  0.02). Relative CIs divide the paired difference's CI by the `beta = 0` model's mean.
- Claims (c), (d): a front comparison counts only over a shared adherence range at least `MIN_SHARED_RANGE` wide, and
  the comparisons that decide one claim are corrected together (Holm, family-wise `ALPHA`).
"""

from __future__ import annotations

from trl_diversity.toolkit.comparison import holm_rejections

MIN_DIVERSITY_GAIN, MAX_ADHERENCE_LOSS = 0.20, 0.05
# About the half-width of a paired adherence CI on 48 prompts.
ADHERENCE_MARGIN = 0.02
# #23's goal (c): fronts whose shared adherence range is narrower than this are no front comparison.
MIN_SHARED_RANGE = 0.02
# The family-wise error rate of each claim's comparisons (Holm's step-down procedure).
ALPHA = 0.05


def relative(difference: dict, reference_mean: float) -> dict:
    """A paired difference (mean and CI) as a share of the reference's mean."""
    return {key: difference[key] / reference_mean for key in ("mean", "low", "high")}


def gain_met(gain: dict) -> bool:
    """Claim (b)'s +20%: the lower end of the relative gain's CI (see `relative`)."""
    return gain["low"] >= MIN_DIVERSITY_GAIN


def budget_met(adherence_change: dict) -> bool:
    """Claim (b)'s 5% adherence budget: the lower end of the relative adherence change's CI stays within -5%."""
    return adherence_change["low"] >= -MAX_ADHERENCE_LOSS


def claim_b_verdict(gain: dict, adherence_change: dict, agreeing: list[str]) -> str:
    """The one rule for claim (b), from the relative gain and adherence change (`relative` CIs) and the held-out
    judges agreeing after Holm: holds when all three parts hold; partly when the MiniLM gain is real (its CI above
    zero) and the +20% gain or the 5% budget is met (a model that gains nothing meets the budget trivially, and a
    judge alone is not a partial win); else it does not hold."""
    parts = [gain_met(gain), budget_met(adherence_change), bool(agreeing)]
    if all(parts):
        return "holds"
    return "partly" if gain["low"] > 0 and any(parts[:2]) else "does not hold"


def wide_enough(gap: dict | None) -> bool:
    """A front gap over a shared adherence range wide enough to count (`MIN_SHARED_RANGE`)."""
    if gap is None or "quality_range" not in gap:
        return False
    low, high = gap["quality_range"]
    return high - low >= MIN_SHARED_RANGE


def holm(gaps: dict[str, dict]) -> set[str]:
    """The comparisons (each with a `p_value`) that survive Holm's correction over all of them at `ALPHA`."""
    return holm_rejections({name: gap["p_value"] for name, gap in gaps.items()}, ALPHA)


def percent_ci(d: dict) -> str:
    return f"{d['mean']:+.1%} [{d['low']:+.1%}, {d['high']:+.1%}]"
