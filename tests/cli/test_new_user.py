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


# ---------------------------------------------------------------------------------------------------------------------
# Issue 33, section 3: what a new user hit on the second walkthrough


def _one_line_refusal(capsys, argv) -> str:
    """The message of a command refused in one line, exit status 2."""
    import pytest

    from trl_diversity import cli

    with pytest.raises(SystemExit) as refused:
        cli.main(argv)
    err = capsys.readouterr().err
    assert refused.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def _vllm_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def test_use_vllm_without_vllm_is_refused_in_one_line_before_any_model_loads(tmp_path, capsys):
    """`--use_vllm true` in `.venv` ended in TRL's traceback, "Please install vLLM with pip install trl[vllm]", after
    the model had loaded; the docs say to use `scripts/setup_vllm.sh` instead."""
    import pytest

    from trl_diversity.errors import UserError

    if _vllm_installed():
        pytest.skip("vLLM is installed here: use_vllm is allowed")
    with pytest.raises(UserError) as refused:
        DiversityCFGTrainer(
            model=str(tmp_path / "never-loaded"),  # the refusal comes first: nothing is loaded
            args=make_args(tmp_path, use_vllm=True),
            train_dataset=load_prompts("train", limit=4),
        )
    message = str(refused.value)
    assert "bash scripts/setup_vllm.sh" in message and ".venv-vllm/bin/" in message and "\n" not in message
    line = _one_line_refusal(capsys, ["train", "--use_vllm", "true", "--output_dir", str(tmp_path / "out")])
    assert "bash scripts/setup_vllm.sh" in line and ".venv-vllm/bin/trl-diversity" in line
    assert not (tmp_path / "out").exists()


def test_the_python_api_refuses_a_model_path_that_does_not_exist_in_one_line(tmp_path):
    """It ended in transformers' `OSError: Repo id must be in the form ...`; the command line says it plainly."""
    import pytest

    from trl_diversity.errors import UserError

    with pytest.raises(UserError, match=r"^model /no/such/path does not exist; .*`default`"):
        DiversityCFGTrainer(
            model="/no/such/path", args=make_args(tmp_path), train_dataset=load_prompts("train", limit=4)
        )


def test_an_unknown_dataset_is_one_line_at_once_offline(tmp_path, capsys):
    """An unknown `--dataset_name` gave a 37-line traceback after 5 retries and 28 s."""
    import time

    started = time.monotonic()
    line = _one_line_refusal(
        capsys, ["train", "--dataset_name", "nosuch/dataset", "--output_dir", str(tmp_path / "out")]
    )
    assert "--dataset_name nosuch/dataset is not a local file or folder" in line and "HF_HUB_OFFLINE" in line
    assert time.monotonic() - started < 10  # checked before the config is even parsed


def test_an_unknown_dataset_is_one_line_online_from_one_quick_question_to_the_hub(monkeypatch):
    import huggingface_hub
    import pytest
    from huggingface_hub.errors import RepositoryNotFoundError

    from trl_diversity.cli.train import check_hub_dataset
    from trl_diversity.errors import UserError

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    asked = []

    def not_found(self, name, timeout=None):
        asked.append((name, timeout))
        error = RepositoryNotFoundError.__new__(RepositoryNotFoundError)
        Exception.__init__(error, "404")
        raise error

    monkeypatch.setattr(huggingface_hub.HfApi, "dataset_info", not_found)
    with pytest.raises(UserError, match="the hub has no dataset of that name"):
        check_hub_dataset("nosuch/dataset")
    assert asked == [("nosuch/dataset", 10)]  # once, with a timeout: no retries

    def unreachable(self, name, timeout=None):
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(huggingface_hub.HfApi, "dataset_info", unreachable)
    with pytest.raises(UserError, match="the hub cannot be reached .*Name or service not known"):
        check_hub_dataset("nosuch/dataset")


def test_a_typo_of_a_built_in_diversity_reward_gets_a_did_you_mean(tmp_path, capsys):
    line = _one_line_refusal(capsys, ["train", "--diversity_reward", "lexicl", "--output_dir", str(tmp_path / "o")])
    assert "did you mean `lexical`?" in line


def test_the_base_rows_of_the_report_are_measured_on_the_first_process_only_and_say_why(
    tiny_checkpoint, tmp_path, monkeypatch, capsys
):
    """The "base" and "base + CFG 3" progress bars ran before training with no word of why, and under `accelerate`
    on every process."""
    from types import SimpleNamespace

    from trl_diversity.cli import train
    from trl_diversity.toolkit import report

    measured = []

    class Report:
        def __init__(self, args, tokenizer, num_prompts, num_samples, chat=True):
            self.prompts = ["p"] * num_prompts

        def measure_base(self, model_path):
            measured.append(model_path)

    monkeypatch.setattr(report, "BeforeAfterReport", Report)
    script = SimpleNamespace(report_prompts=6, report_samples=4, prompt_format="conversational")
    model = SimpleNamespace(model_name_or_path=tiny_checkpoint)
    monkeypatch.setenv("RANK", "1")
    assert train.measure_base_for_report(script, make_args(tmp_path), model) is None and measured == []
    monkeypatch.setenv("RANK", "0")
    assert train.measure_base_for_report(script, make_args(tmp_path, guidance_scale=3.0), model) is not None
    assert measured == [tiny_checkpoint]
    out = capsys.readouterr().out
    assert "without and with CFG 3, on 6 evaluation prompts" in out and "--report_prompts 0" in out
    script.report_prompts = 0
    assert train.measure_base_for_report(script, make_args(tmp_path), model) is None


def test_without_a_quality_reward_train_says_where_the_diversity_reward_is_logged(capsys):
    """`reward 0`, `frac_reward_zero_std 1` on every log line looked like a dead signal."""
    from types import SimpleNamespace

    from trl_diversity.cli.train import print_quality_reward_note

    print_quality_reward_note(SimpleNamespace(reward_funcs=[], args=SimpleNamespace(distill_coef=1.0)))
    out = capsys.readouterr().out
    assert "`frac_reward_zero_std` 1" in out and "`diversity/reward/mean`" in out and "`distill/divergence`" in out
    print_quality_reward_note(SimpleNamespace(reward_funcs=[len], args=SimpleNamespace(distill_coef=1.0)))
    assert capsys.readouterr().out == ""
