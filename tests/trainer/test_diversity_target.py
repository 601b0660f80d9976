"""A diversity target held by the controller, in training: the coefficient moves toward the target, is identical on
every process (tests/distributed/test_distributed.py), and resumes exactly from a checkpoint."""

import pytest
from tiny_training import (
    assert_same_weights,
    final_weights,
    logged,
    make_args,
    make_trainer,
    run_interrupted_and_resumed,
)

from trl_diversity.trainer.diversity_controller import current_controller


@pytest.mark.parametrize("target, direction", [(2.0, "rises"), (0.01, "falls")])
def test_the_coefficient_rises_below_the_target_and_falls_above_it(tiny_checkpoint, tmp_path, target, direction):
    # Embedding diversity (1 - cos) lies in [0, 2]: a target of 2 is above any batch's mean, 0.01 below it.
    trainer = make_trainer(tiny_checkpoint, tmp_path, diversity_target=target, diversity_coef=4.0, max_steps=3)
    trainer.train()
    coefs, diversity = logged(trainer, "diversity/coef"), logged(trainer, "diversity/reward/mean")
    assert len(coefs) == len(diversity) == 3 and logged(trainer, "diversity/target") == [target] * 3
    assert coefs[0] == 4.0  # the first batch trains with the starting value
    steps = [b - a for a, b in zip(coefs, [*coefs[1:], trainer.diversity_coef])]
    assert all(step > 0 for step in steps) if direction == "rises" else all(step < 0 for step in steps)
    assert all(abs(b / a - 1) <= 0.02 + 1e-12 for a, b in zip(coefs, coefs[1:]))  # at most 2% a batch


def test_an_initial_target_is_the_first_batches_mean_diversity(tiny_checkpoint, tmp_path, capsys):
    trainer = make_trainer(
        tiny_checkpoint,
        tmp_path,
        diversity_reward="lexical",
        diversity_target="initial*0.5",
        diversity_target_warmup_steps=2,
        max_steps=3,
    )
    trainer.train()
    coefs, diversity = logged(trainer, "diversity/coef"), logged(trainer, "diversity/reward/mean")
    assert coefs[:2] == [15.0, 15.0]  # held during the warm-up
    assert logged(trainer, "diversity/target") == [pytest.approx(0.5 * (diversity[0] + diversity[1]) / 2)]
    said = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Diversity target set to")]
    assert len(said) == 1 and f"{0.5 * (diversity[0] + diversity[1]) / 2:.4g}" in said[0]


def test_a_resumed_run_continues_with_the_uninterrupted_coefficient(tiny_checkpoint, tmp_path):
    settings = dict(
        max_steps=4,
        save_strategy="steps",
        save_steps=2,
        full_determinism=True,
        diversity_target=2.0,
        diversity_coef=4.0,
    )
    uninterrupted, _, resumed = run_interrupted_and_resumed(
        lambda folder, **kwargs: make_trainer(tiny_checkpoint, folder, **kwargs), tmp_path, settings
    )
    # A controller that did not reload its state would run steps 3-4 from diversity_coef again.
    assert current_controller(resumed).state_dict() == current_controller(uninterrupted).state_dict()
    # The resumed log history holds the checkpoint's steps 1-2, then its own 3-4: every coefficient the same.
    assert logged(resumed, "diversity/coef") == logged(uninterrupted, "diversity/coef")
    assert len(set(logged(uninterrupted, "diversity/coef"))) == 4  # it moved at every batch
    assert_same_weights(resumed, final_weights(uninterrupted))


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(diversity_target=1.5, diversity_reward="lexical"), "range"),
        (dict(diversity_target="initial", diversity_coef=0.0), "diversity_coef > 0"),
        (dict(diversity_target=0.5, diversity_coef=0.0, distill_coef=1.0), "diversity_coef > 0"),
        (dict(diversity_target="initial*-1"), "diversity_target"),
        (dict(diversity_target="most"), "diversity_target"),
    ],
)
def test_a_target_that_cannot_mean_anything_is_refused_by_the_config(tmp_path, fields, message):
    with pytest.raises(ValueError, match=message):
        make_args(tmp_path, **fields)


def test_the_rate_sets_the_controllers_largest_step(tiny_checkpoint, tmp_path):
    # rate 1.0: a saturated error (target 2.0 is above any batch) moves the coefficient by exactly 1 + 1.0 * 0.2
    trainer = make_trainer(
        tiny_checkpoint, tmp_path, diversity_target=2.0, diversity_coef=4.0, diversity_target_rate=1.0, max_steps=2
    )
    assert current_controller(trainer).settings()["rate"] == 1.0  # also what a checkpoint stores for the resume
    trainer.train()
    coefs = [*logged(trainer, "diversity/coef"), trainer.diversity_coef]
    assert coefs == pytest.approx([4.0, 4.0 * 1.2, 4.0 * 1.2**2])


@pytest.mark.parametrize("rate", [0.0, -0.1, 5.0, float("nan")])
def test_a_rate_that_could_stall_or_flip_the_coefficient_is_refused(tmp_path, rate):
    with pytest.raises(ValueError, match=r"diversity_target_rate must lie in \(0, 5\)"):
        make_args(tmp_path, diversity_target=0.5, diversity_target_rate=rate)


def test_controller_settings_without_a_target_are_reported_as_ignored(tmp_path):
    with pytest.warns(UserWarning, match=r"diversity_target_rate=0\.5 ignored: .* diversity_target=None"):
        make_args(tmp_path, diversity_target_rate=0.5)
