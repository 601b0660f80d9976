import torch
from tiny_training import StopAt, final_weights, make_trainer


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
