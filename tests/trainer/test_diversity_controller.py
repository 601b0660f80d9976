"""The diversity-target controller: parsing and checks, the control rule, and exact resume."""

import json
import logging
import math
from types import SimpleNamespace

import pytest
import torch
from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_callback import CallbackHandler, DefaultFlowCallback

from trl_diversity.trainer.diversity_controller import (
    DEFAULT_EMA,
    DEFAULT_MAX_ERROR,
    DEFAULT_RATE,
    DiversityCoefController,
    DiversityControllerCallback,
    DiversityTarget,
    check_diversity_target,
    current_controller,
    measure_range,
    parse_diversity_target,
)

LOGGER = "trl_diversity.trainer.diversity_controller"
MAX_STEP = DEFAULT_RATE * DEFAULT_MAX_ERROR  # the largest relative move of the coefficient in one step


def measurements(n, start=0.2, amplitude=0.3):
    """A deterministic, irregular sequence of mean diversities that crosses a target of 0.5 both ways."""
    return [start + amplitude * (0.5 + 0.5 * math.sin(1.7 * t) * math.cos(0.3 * t)) for t in range(n)]


# ---------------------------------------------------------------------------------------------------------------------
# Parsing and checks


@pytest.mark.parametrize(
    "value, expected",
    [
        (None, None),
        (0.5, DiversityTarget(level=0.5)),
        (1, DiversityTarget(level=1.0)),
        ("0.5", DiversityTarget(level=0.5)),
        (" 1e-1 ", DiversityTarget(level=0.1)),
        ("initial", DiversityTarget(relative_factor=1.0)),
        ("initial*0.9", DiversityTarget(relative_factor=0.9)),
        ("initial * 1.5", DiversityTarget(relative_factor=1.5)),
        (DiversityTarget(level=0.3), DiversityTarget(level=0.3)),
    ],
)
def test_parse_accepts_the_documented_forms(value, expected):
    target = parse_diversity_target(value)
    assert target == expected
    if target is not None:
        assert parse_diversity_target(target.spec) == target  # the config form round-trips


@pytest.mark.parametrize(
    "value",
    ["", "high", "initial*", "initial*0", "initial*-1", "initial*abc", "initial*nan", "initial*inf", "0.9*initial",
     "Initial", "nan", "inf", float("nan"), float("inf"), True, [0.5]],
)  # fmt: skip
def test_parse_refuses_anything_else_in_one_line_naming_the_field_and_the_forms(value):
    with pytest.raises(ValueError) as raised:
        parse_diversity_target(value)
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"diversity_target={value!r} ")
    assert "'initial'" in message and "'initial*<factor>'" in message and "None" in message


def test_describe_says_what_the_target_is():
    assert parse_diversity_target(0.5).describe() == "a mean diversity reward of 0.5"
    assert parse_diversity_target("initial").describe().startswith("the initial policy's diversity")
    assert parse_diversity_target("initial*0.9").describe().startswith("0.9 x the initial policy's diversity")
    with pytest.raises(ValueError, match="exactly one"):
        DiversityTarget(level=0.5, relative_factor=0.9)


def test_measure_ranges_of_the_built_ins():
    assert measure_range("embedding") == (0.0, 2.0)
    assert measure_range("lexical") == (0.0, 1.0)
    assert measure_range("partition") == (0.0, 1.0)
    assert measure_range("my_rewards:distinct") is None


@pytest.mark.parametrize("measure, level", [("embedding", 2.5), ("lexical", 1.2), ("partition", -0.1)])
def test_check_refuses_a_level_outside_the_measures_range(measure, level):
    with pytest.raises(ValueError) as raised:
        check_diversity_target(parse_diversity_target(level), 15.0, measure_range(measure), measure_name=measure)
    message = str(raised.value)
    assert "\n" not in message
    assert f"diversity_target={level!r}" in message and f"diversity_reward={measure!r}" in message
    assert "inside that range" in message


def test_check_accepts_levels_inside_the_range_and_anything_finite_for_a_custom_reward():
    check_diversity_target(parse_diversity_target(2.0), 15.0, measure_range("embedding"))
    check_diversity_target(parse_diversity_target(1.0), 15.0, measure_range("partition"))
    check_diversity_target(parse_diversity_target(5.0), 15.0, None)
    check_diversity_target(parse_diversity_target(-0.3), 15.0, None)
    check_diversity_target(parse_diversity_target("initial*3"), 15.0, measure_range("lexical"))
    check_diversity_target(None, 0.0, measure_range("embedding"))  # a fixed coefficient: nothing to check


@pytest.mark.parametrize("target", ["initial", "initial*0.9", 0.5])
def test_check_refuses_a_target_with_a_zero_starting_coefficient(target):
    with pytest.raises(ValueError) as raised:
        check_diversity_target(parse_diversity_target(target), 0.0, measure_range("embedding"))
    message = str(raised.value)
    assert "\n" not in message
    assert "diversity_target=" in message and "set diversity_coef > 0 as the starting value" in message.lower()


@pytest.mark.parametrize("factor", [0.0, -0.5, float("nan"), float("inf")])
def test_check_refuses_a_relative_factor_that_is_not_positive_and_finite(factor):
    with pytest.raises(ValueError, match=r"diversity_target: the factor of 'initial\*<factor>' must be a finite"):
        check_diversity_target(DiversityTarget(relative_factor=factor), 15.0, None)


def test_check_refuses_a_zero_level():
    with pytest.raises(ValueError, match="diversity_target=0 cannot be aimed at"):
        check_diversity_target(parse_diversity_target(0), 15.0, measure_range("embedding"))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(target=None), "needs no controller"),
        (dict(target=0.5, initial_coef=0.0), "diversity_coef > 0"),
        (dict(rate=0.0), "rate"),
        (dict(ema=0.0), "ema"),
        (dict(ema=1.5), "ema"),
        (dict(max_error=0.0), "max_error"),
        (dict(rate=5.0, max_error=0.2), "max_error"),
        (dict(lower=20.0), "bounds"),
        (dict(upper=10.0), "bounds"),
        (dict(warmup_steps=0), "warmup_steps"),
        (dict(warmup_steps=2.5), "warmup_steps"),
    ],
)
def test_controller_refuses_bad_settings(kwargs, match):
    settings = dict(target=0.5, initial_coef=15.0) | kwargs
    with pytest.raises(ValueError, match=match):
        DiversityCoefController(**settings)


# ---------------------------------------------------------------------------------------------------------------------
# The rule


def test_coef_rises_while_diversity_is_below_the_target_and_falls_while_above():
    below = DiversityCoefController(0.5, 15.0)
    coefs = [below.update(0.3) for _ in range(20)]
    assert all(b > a for a, b in zip([15.0, *coefs], coefs))

    above = DiversityCoefController(0.5, 15.0)
    coefs = [above.update(0.7) for _ in range(20)]
    assert all(b < a for a, b in zip([15.0, *coefs], coefs))

    # With a running mean (ema < 1) the coefficient turns only once the mean crosses the target.
    crossing = DiversityCoefController(0.5, 15.0, ema=0.2)
    for _ in range(30):
        crossing.update(0.3)
    peak = crossing.coef
    for _ in range(3):
        crossing.update(0.7)
        assert crossing.running_mean < 0.5 and crossing.coef > peak  # still below on average: still rising
        peak = crossing.coef
    while crossing.running_mean < 0.5:
        crossing.update(0.7)
    before = crossing.coef
    assert crossing.update(0.7) < before


def test_a_saturated_error_moves_the_coefficient_by_rate_times_max_error_per_step():
    controller = DiversityCoefController(0.5, 10.0)
    assert controller.update(0.0) == 10.0 * (1 + MAX_STEP)  # 100% below: error clipped to +0.2
    controller = DiversityCoefController(0.5, 10.0)
    assert controller.update(2.0) == 10.0 * (1 - MAX_STEP)  # 300% above: error clipped to -0.2
    controller = DiversityCoefController(0.5, 10.0)
    assert controller.update(0.45) == 10.0 * (1 + DEFAULT_RATE * 0.1)  # 10% below: proportional
    # About a factor e in 50 saturated steps.
    controller = DiversityCoefController(0.5, 1.0)
    for _ in range(50):
        controller.update(0.0)
    assert 2.5 < controller.coef < 2.8


def test_coef_stays_within_its_bounds():
    controller = DiversityCoefController(0.5, 15.0)
    for _ in range(2000):
        assert 0.15 <= controller.update(0.0) <= 1500.0
    assert controller.coef == 1500.0  # default upper bound: 100 x the starting value
    for _ in range(4000):
        assert 0.15 <= controller.update(2.0) <= 1500.0
    assert controller.coef == 0.15  # default lower bound: the starting value / 100

    custom = DiversityCoefController(0.5, 15.0, lower=10.0, upper=20.0)
    assert max(custom.update(0.0) for _ in range(100)) == 20.0
    assert min(custom.update(2.0) for _ in range(300)) == 10.0


def test_initial_target_is_set_after_the_warm_up_which_holds_the_coefficient():
    controller = DiversityCoefController("initial*0.9", 15.0, warmup_steps=4)
    warm_up = [0.6, 0.5, 0.7, 0.4]
    for i, value in enumerate(warm_up):
        assert controller.target is None and controller.warming_up
        assert controller.update(value) == 15.0
        assert controller.coef == 15.0
        assert controller.running_mean is not None  # the running mean is kept up during the warm-up
        if i < len(warm_up) - 1:
            assert controller.target is None
    assert controller.target == 0.9 * (math.fsum(warm_up) / 4)
    assert not controller.warming_up
    assert controller.update(0.55) < 15.0  # above the target of 0.495: control starts, downwards


def test_a_numeric_target_acts_from_the_first_measurement():
    controller = DiversityCoefController(0.5, 15.0)
    assert controller.target == 0.5 and not controller.warming_up
    assert controller.update(0.4) > 15.0


@pytest.mark.parametrize("ema", [DEFAULT_EMA, 0.5, 0.1])
@pytest.mark.parametrize("outlier", [2.0, 1e9, -1e9, 0.0])
def test_one_outlier_moves_the_coefficient_by_at_most_rate_times_max_error(outlier, ema):
    controller = DiversityCoefController(0.5, 15.0, ema=ema)
    for value in measurements(200, start=0.45, amplitude=0.1):  # noise around the target
        controller.update(value)
    before = controller.coef
    after = controller.update(outlier)
    assert abs(after / before - 1) <= MAX_STEP + 1e-12


def outlier_cost(ema):
    """The coefficient's relative change after one batch at the embedding maximum, all others at the target."""
    controller = DiversityCoefController(0.5, 15.0, ema=ema)
    for _ in range(50):
        controller.update(0.5)
    steady = controller.coef
    controller.update(2.0)
    for _ in range(200):
        controller.update(0.5)
    return controller.coef / steady - 1


def test_by_default_an_outliers_whole_effect_is_one_clipped_step():
    assert DEFAULT_EMA == 1.0
    assert outlier_cost(DEFAULT_EMA) == pytest.approx(-MAX_STEP, abs=1e-12)
    # A running mean spreads the outlier over steps that each stay under the clip: its whole effect escapes it.
    assert outlier_cost(0.5) < -4 * MAX_STEP
    assert outlier_cost(0.1) < -10 * MAX_STEP


def test_a_non_finite_measurement_is_skipped_with_a_warning(caplog):
    controller = DiversityCoefController("initial", 15.0, warmup_steps=2)
    controller.update(0.5)
    state = controller.state_dict()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert controller.update(float("nan")) == 15.0
        assert controller.update(float("inf")) == 15.0
    assert controller.state_dict() == state
    assert "measurement skipped" in caplog.text


def test_same_inputs_give_the_same_coefficients_whatever_their_type():
    values = measurements(80)
    a = DiversityCoefController("initial*0.9", 15.0, warmup_steps=3)
    b = DiversityCoefController("initial*0.9", 15.0, warmup_steps=3)
    coefs_a = [a.update(v) for v in values]
    coefs_b = [b.update(torch.tensor(v, dtype=torch.float64)) for v in values]  # e.g. a gathered tensor's mean
    assert coefs_a == coefs_b
    assert all(type(c) is float for c in coefs_b)
    assert json.dumps(b.state_dict())  # plain JSON


def test_metrics_report_the_coefficient_target_and_running_mean():
    controller = DiversityCoefController("initial", 15.0, warmup_steps=2)
    metrics = controller.metrics()
    assert metrics["diversity/coef"] == 15.0 and math.isnan(metrics["diversity/target"])
    controller.update(0.4)
    controller.update(0.6)
    assert controller.metrics() == {
        "diversity/coef": 15.0,
        "diversity/target": 0.5,
        "diversity/running_mean": 0.6,
    }


def test_a_zero_initial_diversity_target_lowers_the_coefficient_above_it():
    controller = DiversityCoefController("initial", 15.0, warmup_steps=2)
    controller.update(0.0)
    controller.update(0.0)
    assert controller.target == 0.0
    assert controller.update(0.0) == 15.0  # at the target
    assert controller.update(0.3) == 15.0 * (1 - MAX_STEP)


# ---------------------------------------------------------------------------------------------------------------------
# Persistence


SETTINGS = [
    dict(target="initial*0.9", initial_coef=15.0, warmup_steps=5),
    dict(target=0.45, initial_coef=15.0, ema=0.1),
    dict(target="initial", initial_coef=4.0, rate=0.5, ema=0.3, lower=1.0, upper=40.0, warmup_steps=2),
]


def checkpoint_round_trip(callback, path):
    """What the Trainer writes for `callback` at a checkpoint, read back as a resumed Trainer reads it.

    The `TrainerState` is built as `Trainer._init_training_state` builds it (its `__post_init__` calls `state()`);
    the loop that refreshes the entries mirrors `Trainer._save_checkpoint`; `save_to_json`/`load_from_json` are the
    real ones.
    """
    control = TrainerControl()
    state = TrainerState(stateful_callbacks=[callback, control])
    state.global_step = 7
    for cb in [callback, control]:  # Trainer._save_checkpoint
        name = cb.__class__.__name__
        if isinstance(state.stateful_callbacks[name], list):
            state.stateful_callbacks[name].append(cb.state())
        else:
            state.stateful_callbacks[name] = cb.state()
    state.save_to_json(str(path))
    return TrainerState.load_from_json(str(path))


def fake_trainer(callbacks, state, restore):
    """The attributes `Trainer._load_callback_state` reads, around a real `CallbackHandler`."""
    handler = CallbackHandler([DefaultFlowCallback(), *callbacks], None, None, None, None)
    args = SimpleNamespace(restore_callback_states_from_checkpoint=restore)
    return SimpleNamespace(args=args, state=state, control=TrainerControl(), callback_handler=handler)


@pytest.mark.parametrize("settings", SETTINGS)
@pytest.mark.parametrize("split", [2, 4, 40])  # inside the warm-up, at its end, long after
@pytest.mark.parametrize("restore_flag", [True, False])
def test_a_resumed_controller_continues_with_exactly_the_uninterrupted_coefficients(
    settings, split, restore_flag, tmp_path
):
    values = measurements(80)
    uninterrupted = DiversityCoefController(**settings)
    expected = [uninterrupted.update(v) for v in values]

    first = DiversityCoefController(**settings)
    for v in values[:split]:
        first.update(v)
    loaded = checkpoint_round_trip(DiversityControllerCallback(first), tmp_path / "trainer_state.json")

    # The resumed run builds its callback afresh from its config, as the trainer would.
    fresh = DiversityCoefController(**settings)
    trainer = fake_trainer([DiversityControllerCallback(fresh)], loaded, restore_flag)
    Trainer._load_callback_state(trainer)  # the real restore: only acts with the flag
    trainer.callback_handler.on_train_begin(trainer.args, trainer.state, trainer.control)
    resumed = current_controller(trainer)
    # With the flag the Trainer swapped in a new callback (hence a new controller): look it up, never cache it.
    assert (resumed is fresh) is not restore_flag
    assert resumed.state_dict() == first.state_dict()
    assert [resumed.update(v) for v in values[split:]] == expected[split:]


def test_from_state_rebuilds_the_same_controller():
    controller = DiversityCoefController("initial*0.8", 15.0, warmup_steps=3)
    for v in measurements(10):
        controller.update(v)
    callback = DiversityControllerCallback(controller)
    rebuilt = DiversityControllerCallback.from_state(json.loads(json.dumps(callback.state())))
    assert rebuilt.controller.settings() == controller.settings()
    assert rebuilt.controller.state_dict() == controller.state_dict()


def test_a_checkpoint_without_controller_state_gets_an_entry_and_a_warning(tmp_path, caplog):
    state = TrainerState(stateful_callbacks=[TrainerControl()])  # saved by a run with a fixed coefficient
    state.global_step = 5
    state.save_to_json(str(tmp_path / "trainer_state.json"))
    loaded = TrainerState.load_from_json(str(tmp_path / "trainer_state.json"))
    controller = DiversityCoefController("initial", 15.0)
    trainer = fake_trainer([DiversityControllerCallback(controller)], loaded, True)
    Trainer._load_callback_state(trainer)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        trainer.callback_handler.on_train_begin(trainer.args, trainer.state, trainer.control)
    assert "starts afresh at diversity_coef=15" in caplog.text and "resumed policy" in caplog.text
    # Trainer._save_checkpoint indexes stateful_callbacks by class name: the entry must exist.
    assert loaded.stateful_callbacks["DiversityControllerCallback"] == DiversityControllerCallback(controller).state()
    assert current_controller(trainer) is controller and controller.coef == 15.0


def test_a_fresh_run_is_untouched_by_its_own_entry(caplog):
    controller = DiversityCoefController(0.5, 15.0)
    callback = DiversityControllerCallback(controller)
    state = TrainerState(stateful_callbacks=[callback, TrainerControl()])
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        callback.on_train_begin(None, state, TrainerControl())
    assert caplog.text == ""
    assert controller.state_dict() == DiversityCoefController(0.5, 15.0).state_dict()


def test_resuming_with_changed_settings_keeps_the_state_and_warns(tmp_path, caplog):
    first = DiversityCoefController("initial*0.9", 15.0, warmup_steps=3)
    for v in measurements(20):
        first.update(v)
    loaded = checkpoint_round_trip(DiversityControllerCallback(first), tmp_path / "trainer_state.json")
    changed = DiversityCoefController("initial*0.8", 15.0, warmup_steps=3, rate=0.2)
    trainer = fake_trainer([DiversityControllerCallback(changed)], loaded, False)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        trainer.callback_handler.on_train_begin(trainer.args, trainer.state, trainer.control)
    assert "'initial*0.9' -> 'initial*0.8'" in caplog.text and "rate: 0.1 -> 0.2" in caplog.text
    assert changed.coef == first.coef and changed.running_mean == first.running_mean
    assert changed.target == 0.8 * (math.fsum(measurements(3)) / 3)  # the new factor on the stored warm-up


def test_a_malformed_state_is_refused():
    controller = DiversityCoefController(0.5, 15.0)
    with pytest.raises(ValueError, match="Cannot restore the diversity controller"):
        controller.load_state_dict({"coef": 15.0})
    with pytest.raises(ValueError, match="Cannot restore the diversity controller"):
        controller.load_state_dict({"coef": float("nan"), "running_mean": None, "steps": 0, "warmup_samples": []})
    with pytest.raises(ValueError, match="has no state"):
        DiversityControllerCallback(controller).restore({"args": {}, "attributes": {}})


# A real Trainer: checkpoints written by `_save_checkpoint`, resumed by `train(resume_from_checkpoint=...)`.


class _Quadratic(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x, labels=None):
        return {"loss": ((self.w - x) ** 2).mean()}


class _Measure(TrainerCallback):
    """Feeds the live controller one measurement per step, as the trainer will (stopping early if asked)."""

    def __init__(self, values, stop_at=None):
        self.values, self.stop_at, self.trainer, self.coefs = values, stop_at, None, {}

    def on_step_end(self, args, state, control, **kwargs):
        controller = current_controller(self.trainer)
        self.coefs[state.global_step] = controller.update(self.values[state.global_step - 1])
        if state.global_step == self.stop_at:
            control.should_training_stop = True


def _run(output_dir, values, restore_flag, stop_at=None, resume=None, with_controller=True):
    args = TrainingArguments(
        output_dir=str(output_dir),
        max_steps=6,
        save_strategy="steps",
        save_steps=3,
        per_device_train_batch_size=1,
        learning_rate=0.1,
        use_cpu=True,
        report_to="none",
        logging_strategy="no",
        disable_tqdm=True,
        restore_callback_states_from_checkpoint=restore_flag,
    )
    measure = _Measure(values, stop_at)
    controller = DiversityCoefController("initial*0.9", 15.0, warmup_steps=2)
    dataset = [{"x": torch.tensor([float(i)])} for i in range(6)]
    trainer = Trainer(
        model=_Quadratic(),
        args=args,
        train_dataset=dataset,
        callbacks=[DiversityControllerCallback(controller), measure] if with_controller else [],
    )
    measure.trainer = trainer
    trainer.train(resume_from_checkpoint=resume)
    return measure.coefs, trainer


@pytest.mark.parametrize("restore_flag", [False, True])
def test_a_real_trainer_resumes_the_controller_exactly(restore_flag, tmp_path):
    values = measurements(6)
    expected, _ = _run(tmp_path / "a", values, restore_flag)
    _run(tmp_path / "b", values, restore_flag, stop_at=3)
    checkpoint = tmp_path / "b" / "checkpoint-3"
    stored = json.loads((checkpoint / "trainer_state.json").read_text())["stateful_callbacks"]
    assert stored["DiversityControllerCallback"]["attributes"]["controller_state"]["coef"] == expected[3]
    resumed, trainer = _run(tmp_path / "b", values, restore_flag, resume=str(checkpoint))
    assert sorted(resumed) == [4, 5, 6]
    assert [resumed[step] for step in (4, 5, 6)] == [expected[step] for step in (4, 5, 6)]
    assert current_controller(trainer).coef == expected[6]


def test_a_real_trainer_resumes_with_a_controller_from_a_checkpoint_saved_without_one(tmp_path, caplog):
    # transformers' _save_checkpoint raises KeyError for an ExportableState callback the resumed state lacks.
    _run(tmp_path, measurements(6), False, with_controller=False)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        coefs, trainer = _run(tmp_path, measurements(6), False, resume=str(tmp_path / "checkpoint-3"))
    assert "starts afresh at diversity_coef=15" in caplog.text
    assert sorted(coefs) == [4, 5, 6] and trainer.state.global_step == 6
    stored = json.loads((tmp_path / "checkpoint-6" / "trainer_state.json").read_text())["stateful_callbacks"]
    assert stored["DiversityControllerCallback"]["attributes"]["controller_state"]["coef"] == coefs[6]


# ---------------------------------------------------------------------------------------------------------------------
# A run shorter than the warm-up


def _training(max_steps, accumulation=1, steps_per_generation=None, num_iterations=1):
    return SimpleNamespace(
        max_steps=max_steps,
        gradient_accumulation_steps=accumulation,
        steps_per_generation=steps_per_generation,
        num_iterations=num_iterations,
    )


def test_a_run_shorter_than_the_warm_up_of_an_initial_target_warns_once_at_train_start(caplog):
    """`--max_steps 2` with the 10-batch warm-up: the target is never set and the coefficient stays at 15, which no
    line used to say."""
    callback = DiversityControllerCallback(DiversityCoefController("initial*0.9", 15.0))
    state = TrainerState(stateful_callbacks=[callback, TrainerControl()])
    state.max_steps = 2
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        callback.on_train_begin(_training(2), state, TrainerControl())
    assert caplog.text.count("never ends") == 1
    assert "warm-up of 10 generation batches" in caplog.text and "this run has 2 more" in caplog.text
    assert "coefficient stays at 15" in caplog.text


@pytest.mark.parametrize(
    "target, training, warns",
    [
        ("initial", _training(10), False),  # exactly the warm-up
        (0.5, _training(2), False),  # a numeric target has no warm-up
        ("initial", _training(5, accumulation=4, steps_per_generation=2), False),  # 2 generation batches a step
        ("initial", _training(20, num_iterations=2), False),  # one generation batch every 2 steps: 10 in all
        ("initial", _training(17, num_iterations=2), True),  # 9 generation batches
    ],
)
def test_the_warm_up_warning_counts_generation_batches(target, training, warns, caplog):
    callback = DiversityControllerCallback(DiversityCoefController(target, 15.0))
    state = TrainerState(stateful_callbacks=[callback, TrainerControl()])
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        callback.on_train_begin(training, state, TrainerControl())
    assert ("never ends" in caplog.text) == warns
