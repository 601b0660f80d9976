import json
from pathlib import Path

import pytest
import torch
from launching import launch
from transformers import AutoModelForCausalLM

from trl_diversity import group_diversity_rewards
from trl_diversity.rewards.embedder import embed, load_embedder

SCRIPT = Path(__file__).parent / "scripts" / "two_process_train.py"


@pytest.mark.slow
def test_two_processes_compute_the_same_diversity_rewards_as_one(tiny_checkpoint, tmp_path):
    launch(str(SCRIPT), tiny_checkpoint, str(tmp_path))
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["num_processes"] == 2
    completions, logged = result["completions"], torch.tensor(result["diversity"])
    assert len(completions) == 4  # one group of 4, split 2 + 2 across the processes

    expected = group_diversity_rewards(embed(load_embedder(None), completions), 4)
    torch.testing.assert_close(logged, expected, atol=1e-4, rtol=1e-4)
    assert all("loss" in entry for entry in result["log_history"][:2])
    saved = AutoModelForCausalLM.from_pretrained(tmp_path)
    initial = AutoModelForCausalLM.from_pretrained(tiny_checkpoint)
    assert not torch.equal(saved.lm_head.weight, initial.lm_head.weight)  # trained, saved once, loadable


@pytest.mark.slow
def test_train_command_runs_under_accelerate_launch_with_two_processes(tiny_checkpoint, tmp_path):
    flags = ["--model_name_or_path", tiny_checkpoint, "--output_dir", str(tmp_path), "--max_steps", "2"]
    flags += ["--per_device_train_batch_size", "2", "--max_completion_length", "8", "--report_prompts", "0"]
    flags += ["--save_steps", "2", "--lora_target_modules", "q_proj", "v_proj"]
    launch("-m", "trl_diversity.cli", "train", *flags)
    assert (tmp_path / "adapter_config.json").is_file()
    assert (tmp_path / "checkpoint-2" / "trainer_state.json").is_file()
