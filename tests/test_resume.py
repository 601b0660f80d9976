import torch
from test_trainer import make_trainer
from transformers import TrainerCallback


class StopAt(TrainerCallback):
    """Ends training after a given step, as an interruption would (the checkpoint of that step is saved first)."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_save = True
            control.should_training_stop = True


def final_weights(trainer):
    return {name: p.detach().clone() for name, p in trainer.model.named_parameters()}


def run_interrupted_and_resumed(make, root, settings, stop: int = 2):
    """`make(folder, **settings)` trained through in `root/a`; trained to step `stop` in `root/b`, then resumed from
    that step's checkpoint by a new trainer. Returns (uninterrupted, interrupted, resumed)."""
    uninterrupted = make(root / "a", **settings)
    uninterrupted.train()
    interrupted = make(root / "b", **settings)
    interrupted.add_callback(StopAt(stop))
    interrupted.train()
    assert interrupted.state.global_step == stop
    resumed = make(root / "b", **settings)
    resumed.train(resume_from_checkpoint=str(root / "b" / "out" / f"checkpoint-{stop}"))
    assert resumed.state.global_step == settings["max_steps"]
    return uninterrupted, interrupted, resumed


def assert_same_weights(trainer, expected):
    got = final_weights(trainer)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], msg=f"{name} differs after resuming")


def test_interrupted_and_resumed_run_ends_with_the_same_weights(tiny_checkpoint, tmp_path):
    settings = dict(max_steps=4, save_strategy="steps", save_steps=2, full_determinism=True)

    uninterrupted = make_trainer(tiny_checkpoint, tmp_path / "a", **settings)
    uninterrupted.train()

    interrupted = make_trainer(tiny_checkpoint, tmp_path / "b", **settings)
    interrupted.add_callback(StopAt(2))
    interrupted.train()
    assert interrupted.state.global_step == 2
    checkpoint = tmp_path / "b" / "out" / "checkpoint-2"
    assert (checkpoint / "optimizer.pt").is_file() and (checkpoint / "rng_state.pth").is_file()

    resumed = make_trainer(tiny_checkpoint, tmp_path / "b", **settings)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.state.global_step == 4

    expected, got = final_weights(uninterrupted), final_weights(resumed)
    moved = final_weights(interrupted)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], msg=f"{name} differs after resuming")
    assert any(not torch.equal(moved[name], expected[name]) for name in expected)  # steps 3-4 did change weights
