"""The teacher-front report's comparisons: a teacher above CFG's front is found, one on it is not, and Holm runs over
every comparison made."""

import numpy as np

from experiments.teacher_front import Teacher, analyse


def _point(adherence, diversity, noise, rng):
    n = len(noise)
    return {
        "adherence": list(adherence + 0.01 * rng.standard_normal(n)),
        "pairwise_diversity": list(diversity + noise + 0.005 * rng.standard_normal(n)),
    }


def test_a_teacher_above_the_front_survives_holm_and_one_on_it_does_not():
    rng = np.random.default_rng(0)
    noise = 0.02 * rng.standard_normal(40)  # each prompt's own difficulty, shared by every teacher (paired)
    # CFG's front: diversity falls linearly as adherence rises
    cfg = {f"cfg-{g}": _point(0.45 + 0.05 * i, 0.65 - 0.08 * i, noise, rng) for i, g in enumerate((1, 2, 3, 4))}
    teachers = [Teacher(name, "cfg") for name in cfg] + [
        Teacher("above-1", "above", guidance="1*null"),
        Teacher("above-2", "above", guidance="2*null"),
        Teacher("on", "on", guidance="1*layer:1"),
    ]
    evaluated = {name: {"per_prompt": p} for name, p in cfg.items()}
    evaluated["above-1"] = {"per_prompt": _point(0.52, 0.60, noise, rng)}  # +0.06 over the front at 0.52
    evaluated["above-2"] = {"per_prompt": _point(0.57, 0.52, noise, rng)}
    evaluated["on"] = {"per_prompt": _point(0.55, 0.65 - 0.08 * 2, noise, rng)}
    analysis = analyse(evaluated, teachers)
    assert analysis["points"]["above-1"]["low"] > 0.03
    assert abs(analysis["points"]["on"]["mean"]) < 0.01
    assert "point above-1" in analysis["survive_holm"] and "point on" not in analysis["survive_holm"]
    assert analysis["families"]["above"]["mean"] > 0.03  # its shared range with CFG's front is 0.05 wide
    assert analysis["families"]["on"] is None  # one point is no front
    assert set(analysis["tested"]) == {"point above-1", "point above-2", "point on", "family above"}
