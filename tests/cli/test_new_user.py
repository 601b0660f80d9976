"""What a new user hit on a fresh clone: each fixed, each with the test that failed before the fix."""

import json
import warnings
from pathlib import Path

from peft import LoraConfig
from tiny_training import make_args
from transformers import AutoTokenizer

from trl_diversity import DiversityCFGTrainer
from trl_diversity.data import load_prompts


def test_an_adapter_of_the_default_model_records_default_and_saves_without_a_hub_lookup(
    tiny_checkpoint, tmp_path, monkeypatch
):
    """Python API and command line record the base one way, `default`; and saving looks nothing up on a hub (PEFT
    used to look for `default/config.json` there, warning "Could not find a config file in default")."""
    monkeypatch.setattr("trl_diversity.defaults.default_model_path", lambda: Path(tiny_checkpoint))
    trainer = DiversityCFGTrainer(
        model="default",
        args=make_args(tmp_path, max_steps=1),
        train_dataset=load_prompts("train", limit=8),
        processing_class=AutoTokenizer.from_pretrained(tiny_checkpoint),
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"),
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.save_model(str(tmp_path / "adapter"))
    messages = [str(w.message) for w in caught]
    assert not any("config file in default" in m or "Unable to fetch remote file" in m for m in messages), messages
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "default"
    # In memory the model keeps its real base, so that later saves and merges find it locally.
    assert trainer.model.peft_config["default"].base_model_name_or_path == tiny_checkpoint


def test_the_model_card_example_loads_the_saved_folder_not_none(tiny_checkpoint, tmp_path):
    trainer = DiversityCFGTrainer(
        model=tiny_checkpoint,
        args=make_args(tmp_path, max_steps=1),
        train_dataset=load_prompts("train", limit=8),
        processing_class=AutoTokenizer.from_pretrained(tiny_checkpoint),
    )
    trainer.create_model_card()
    card = (Path(trainer.args.output_dir) / "README.md").read_text()
    assert 'model="None"' not in card
    assert f'model="{trainer.args.output_dir}"' in card


def test_a_resumed_run_says_which_checkpoint_it_resumes_from(tiny_checkpoint, tmp_path, capsys):
    def trainer(max_steps):
        return DiversityCFGTrainer(
            model=tiny_checkpoint,
            args=make_args(tmp_path, max_steps=max_steps, save_strategy="steps", save_steps=1),
            train_dataset=load_prompts("train", limit=16),
            processing_class=AutoTokenizer.from_pretrained(tiny_checkpoint),
        )

    trainer(1).train()
    assert "Resuming" not in capsys.readouterr().out
    trainer(2).train(resume_from_checkpoint=True)
    assert "Resuming from checkpoint-1 (step 1 of 2)" in capsys.readouterr().out


def test_a_finished_run_is_not_offered_a_plain_resume(tmp_path):
    import pytest

    from trl_diversity.cli.train import check_output_dir
    from trl_diversity.errors import UserError

    (tmp_path / "checkpoint-24").mkdir()
    (tmp_path / "adapter_model.safetensors").write_bytes(b"")  # the final model: the run finished
    with pytest.raises(UserError) as refused:
        check_output_dir(str(tmp_path), None, False)
    message = str(refused.value)
    assert "finished run" in message and "--max_steps" in message
    (tmp_path / "adapter_model.safetensors").unlink()  # checkpoints only: an interrupted run, resume is the fix
    with pytest.raises(UserError, match="--resume_from_checkpoint true"):
        check_output_dir(str(tmp_path), None, False)
