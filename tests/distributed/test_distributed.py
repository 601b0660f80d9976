import json
from pathlib import Path

import pytest
import torch
from launching import launch
from tiny_training import tiny_train_argv
from toy_group_rewards import rank_by_length
from transformers import AutoModelForCausalLM

from trl_diversity import diversity_advantages, group_diversity_rewards
from trl_diversity.rewards import EmbeddingDiversity, LexicalDiversity, PartitionDiversity, score_groups
from trl_diversity.rewards.embedder import embed
from trl_diversity.rewards.group import Processes

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "two_process_train.py"


def one_process_rewards(reward, prompts, completions):
    """What a group reward gives on one process, stored as GRPO stores rewards (float32)."""
    rewards = score_groups(reward, prompts, completions, 4, processes=Processes(0, 1, list))
    return torch.tensor(rewards).tolist()


@pytest.mark.slow
def test_two_processes_score_whole_groups_once_and_give_the_one_process_rewards(tiny_checkpoint, tmp_path):
    launch(str(SCRIPT), tiny_checkpoint, str(tmp_path))
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["num_processes"] == 2
    embedding = EmbeddingDiversity(None)
    measures = {"lexical": LexicalDiversity(), "partition": PartitionDiversity(), "rank_by_length": rank_by_length}

    # 1. DiversityCFGTrainer, 2 completions per process: each step's one group of 4 spans both processes.
    ours = result["ours"]
    assert len(ours["steps"]) == 2
    for step, step_number in zip(ours["steps"], range(2)):
        prompts, completions = step["prompts"], step["completions"]
        assert len(completions) == 4 and len(set(prompts)) == 1
        # The diversity term (embedding) and every group reward used as a quality reward: the one-process values.
        expected = group_diversity_rewards(embed(embedding.embedder, completions), 4)
        torch.testing.assert_close(torch.tensor(step["diversity"]), expected, atol=1e-6, rtol=0)
        for name, measure in measures.items():
            assert step["rewards"][name] == one_process_rewards(measure, prompts, completions), name
        # Each process added its own slice of diversity_coef * (d_i - b_i) to GRPO's advantages.
        total = [a for process in ours["processes"] for a in process["advantages"][step_number]]
        diversity = result["diversity_coef"] * diversity_advantages(torch.tensor(step["diversity"]), 4)
        torch.testing.assert_close(torch.tensor(total), torch.tensor(step["grpo_advantages"]) + diversity)
        torch.testing.assert_close(torch.tensor(step["table_advantages"]), torch.tensor(total))  # logged = trained
    # The user reward scored each group once in total (not once per process).
    calls = [prompt for process in ours["processes"] for prompt in process["calls"]]
    assert sorted(calls) == sorted(step["prompts"][0] for step in ours["steps"])

    # 2. Plain GRPOTrainer with the wrapper, 6 completions per process: 3 groups per step, shared out.
    grpo = result["grpo"]
    for step in grpo["steps"]:
        expected = one_process_rewards(rank_by_length, step["prompts"], step["completions"])
        assert step["rewards"]["rank_by_length"] == expected
    calls = [process["calls"] for process in grpo["processes"]]
    assert all(calls), "both processes scored groups"
    assert sorted(calls[0] + calls[1]) == sorted(p for step in grpo["steps"] for p in step["prompts"][::4])

    # 3. RLOO with a diversity target: each group spans both processes and gets the one-process diversity rewards;
    # each process added its slice of coef * (d_i - b_i), and both used the same coefficient at every step.
    rloo = result["rloo"]
    assert len(rloo["steps"]) == 2
    for step_number, step in enumerate(rloo["steps"]):
        expected = group_diversity_rewards(embed(embedding.embedder, step["completions"]), 4)
        torch.testing.assert_close(torch.tensor(step["diversity"]), expected, atol=1e-6, rtol=0)
        coefs = [process["coefs"][step_number] for process in rloo["processes"]]
        assert coefs[0] == coefs[1], "the controller's coefficient differs between processes"
        total = [a for process in rloo["processes"] for a in process["advantages"][step_number]]
        diversity = coefs[0] * diversity_advantages(torch.tensor(step["diversity"]), 4)
        torch.testing.assert_close(torch.tensor(total), torch.tensor(step["grpo_advantages"]) + diversity)
        torch.testing.assert_close(torch.tensor(step["table_advantages"]), torch.tensor(total))
    first, second = (rloo["processes"][0]["coefs"][i] for i in (0, 1))
    assert first == 4.0 and second > first  # below the target: the coefficient rose

    assert all("loss" in entry for entry in ours["log_history"][:2])
    saved = AutoModelForCausalLM.from_pretrained(tmp_path)
    initial = AutoModelForCausalLM.from_pretrained(tiny_checkpoint)
    assert not torch.equal(saved.lm_head.weight, initial.lm_head.weight)  # trained, saved once, loadable


@pytest.mark.slow
def test_train_command_runs_under_accelerate_launch_with_two_processes(tiny_checkpoint, tmp_path):
    flags = tiny_train_argv(tiny_checkpoint, tmp_path, "--max_steps", "2", "--per_device_train_batch_size", "2")
    launch("-m", "trl_diversity.cli", "train", *flags, "--save_steps", "2")
    assert (tmp_path / "adapter_config.json").is_file()
    assert (tmp_path / "checkpoint-2" / "trainer_state.json").is_file()


@pytest.mark.slow
def test_the_rloo_recipe_runs_a_step_under_accelerate_launch(tiny_checkpoint, tmp_path):
    recipe = Path(__file__).resolve().parents[2] / "recipes" / "smollm2-135m" / "rloo.yaml"
    flags = ["--model_name_or_path", tiny_checkpoint, "--output_dir", str(tmp_path), "--max_steps", "1"]
    flags += ["--per_device_train_batch_size", "2", "--max_completion_length", "8", "--report_prompts", "0"]
    flags += ["--save_steps", "1", "--logging_steps", "1", "--diversity_reward", "lexical", "--learning_rate", "1e-3"]
    launch("-m", "trl_diversity.cli", "train", str(recipe), *flags)
    state = json.loads((tmp_path / "checkpoint-1" / "trainer_state.json").read_text())
    logged = state["log_history"][0]
    assert "kl" in logged and "distill/divergence" in logged  # RLOO's KL penalty and the method, together
    assert (tmp_path / "model.safetensors").is_file()
