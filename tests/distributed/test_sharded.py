"""Sharded training on two CPU processes (gloo), against one process on the same completions.

`scripts/sharded_train.py` trains two steps under a shipped Accelerate config (`fsdp2.yaml`, `deepspeed_zero2.yaml`,
`deepspeed_zero3.yaml`, launched with `--num_processes 2 --mixed_precision no`), with the distillation loss on TRL's
chunked kernel (the GPU path), and saves what each rank saw. Here one process takes the same prompts and completions
from the same initial weights, computes the loss the CPU way (full logits), and must reproduce:

- the diversity rewards, gathered across the two processes (the group of 4 is split 2 + 2), and the advantages;
- the loss (the mean of the two ranks' losses: FSDP and ZeRO, like DDP, average their gradients) and the full
  gradient of every trainable parameter after the backend's reduction;
- the CFG teacher's guided hidden states at both steps. At the second step the student has moved, so equal teacher
  outputs mean the teacher stayed frozen (with LoRA: that the adapter really was disabled).

And the LM heads the loss projected with had the whole vocabulary, though FSDP2 and ZeRO-3 hold them in shards.
"""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from launching import ACCELERATE_CONFIGS, launch
from peft import LoraConfig
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from trl_diversity import DiversityCFGConfig, DiversityCFGTrainer, diversity_advantages
from trl_diversity.data import load_prompts
from trl_diversity.rewards.embedder import embed, load_embedder
from trl_diversity.rewards.group import Processes, score_groups

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "sharded_train.py"
# The shipped GPU configs, on two CPU processes and in float32 (bf16 on CPU would only blur the comparison).
ON_TWO_CPU_PROCESSES = ("--num_processes", "2", "--mixed_precision", "no")
# How each backend holds the student's and the teacher's parameters between forwards: FSDP2 as DTensor shards,
# ZeRO-3 as partitioned placeholders, ZeRO-2 whole (it shards gradients and optimizer states only).
PARAMETERS = {"fsdp2": "dtensor", "deepspeed_zero2": "plain", "deepspeed_zero3": "zero3"}
# The keys of a generated batch (`_generate_and_score_completions`) in this setting; a new one must be concatenated
# here too.
INPUT_KEYS = {
    "prompt_ids",
    "prompt_mask",
    "completion_ids",
    "completion_mask",
    "advantages",
    "num_items_in_batch",
    "teacher_hidden_states",
}


def concatenate(parts: list[dict], pad_id: int) -> dict:
    """One batch from the ranks' inputs: prompts left-padded and completions right-padded to common widths."""
    assert all(set(part) == INPUT_KEYS for part in parts), [sorted(part) for part in parts]
    assert all(torch.equal(part["num_items_in_batch"], parts[0]["num_items_in_batch"]) for part in parts)
    prompt_width = max(part["prompt_ids"].shape[1] for part in parts)
    completion_width = max(part["completion_ids"].shape[1] for part in parts)

    def left(tensor, value):
        return F.pad(tensor, (prompt_width - tensor.shape[1], 0), value=value)

    def right(tensor, value):
        extra = completion_width - tensor.shape[1]
        return F.pad(tensor, (0, 0, 0, extra) if tensor.dim() == 3 else (0, extra), value=value)

    return {
        "prompt_ids": torch.cat([left(part["prompt_ids"], pad_id) for part in parts]),
        "prompt_mask": torch.cat([left(part["prompt_mask"], 0) for part in parts]),
        "completion_ids": torch.cat([right(part["completion_ids"], pad_id) for part in parts]),
        "completion_mask": torch.cat([right(part["completion_mask"], 0) for part in parts]),
        "advantages": torch.cat([part["advantages"] for part in parts]),
        "teacher_hidden_states": torch.cat([right(part["teacher_hidden_states"], 0.0) for part in parts]),
        "num_items_in_batch": parts[0]["num_items_in_batch"],
    }


def one_process_trainer(checkpoint, tmp_path, kind, initial):
    """The same trainer on one process, with the sharded run's initial weights (LoRA's `A` matrices are random)."""
    peft_config = None
    if kind == "lora":
        peft_config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    args = DiversityCFGConfig(
        output_dir=str(tmp_path / "one_process"),
        use_cpu=True,
        bf16=False,
        max_steps=2,
        per_device_train_batch_size=4,  # the two ranks' 2 + 2 completions
        num_generations=4,
        max_completion_length=8,
        report_to="none",
        save_strategy="no",
        gradient_checkpointing=False,
        seed=0,
    )
    trainer = DiversityCFGTrainer(
        model=checkpoint,
        args=args,
        train_dataset=load_prompts("train", conversational=True, limit=8),
        processing_class=AutoTokenizer.from_pretrained(checkpoint),
        peft_config=peft_config,
    )
    parameters = dict(trainer.model.named_parameters())
    assert set(parameters) == set(initial)
    with torch.no_grad():
        for name, parameter in parameters.items():
            parameter.copy_(initial[name])
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1  # set by the training loop, which this trainer does not run
    return trainer


def assert_same_on_both_ranks(ranks, get):
    first, second = get(ranks[0]), get(ranks[1])
    if isinstance(first, dict):
        assert first.keys() == second.keys()
        for name in first:
            assert torch.equal(first[name], second[name]), name
    else:
        assert first == second


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["copy", "lora"], ids=["frozen-copy-teacher", "lora-adapter-disabled-teacher"])
@pytest.mark.parametrize("backend", list(PARAMETERS))
def test_sharded_training_on_two_processes_matches_one_process(tiny_checkpoint, tmp_path, backend, kind):
    if backend.startswith("deepspeed"):
        pytest.importorskip("deepspeed")
    config = ACCELERATE_CONFIGS / f"{backend}.yaml"
    launch(str(SCRIPT), tiny_checkpoint, str(tmp_path), kind, config=config, overrides=ON_TWO_CPU_PROCESSES)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=False) for rank in (0, 1)]
    vocab = AutoConfig.from_pretrained(tiny_checkpoint).vocab_size
    initial_checkpoint = dict(AutoModelForCausalLM.from_pretrained(tiny_checkpoint).named_parameters())

    # It really ran sharded, and the kernel projected with every row of the LM heads.
    for rank in ranks:
        assert rank["num_processes"] == 2
        assert rank["sharding"][PARAMETERS[backend]] == len(rank["student"])
        assert len(rank["heads"]) == 4  # two steps x (student head, teacher head)
        assert all(head["rows"] == vocab and not head["passed_on_as_dtensor"] for head in rank["heads"])
        assert rank["projections"] == {vocab}
        if backend == "deepspeed_zero3":
            # the student's head reached the loss as an empty ZeRO-3 placeholder: the kernel gathered it
            assert all(head["kind"] == "zero3" and head["local_rows"] == 0 for head in rank["heads"][::2])
    assert_same_on_both_ranks(ranks, lambda rank: rank["initial"])
    assert_same_on_both_ranks(ranks, lambda rank: rank["grads"])
    assert_same_on_both_ranks(ranks, lambda rank: rank["student"])

    if kind == "copy":
        for rank in ranks:
            assert rank["teacher_sharding"][PARAMETERS[backend]] == len(rank["teacher"])
            assert not rank["teacher_requires_grad"]
            for name, value in rank["teacher"].items():
                assert torch.equal(value, initial_checkpoint[name]), f"teacher parameter {name} moved"
            if backend == "fsdp2":
                # TRL's `prepare_fsdp` shards the teacher at its root, which frees the full parameters after each
                # forward: the loss gets the teacher's head as a `[vocab / 2, hidden]` shard and must gather it.
                teacher_heads = rank["heads"][1::2]
                assert all(head["kind"] == "dtensor" and head["local_rows"] == vocab // 2 for head in teacher_heads)
    else:
        assert all("teacher" not in rank for rank in ranks)  # no second copy: the adapter-disabled base

    trainer = one_process_trainer(tiny_checkpoint, tmp_path, kind, ranks[0]["initial"])
    pad_id = trainer.processing_class.pad_token_id

    # Step 1: diversity rewards gathered across the processes, as one process computes them on the same completions.
    assert ranks[0]["rewards"][0]["gathered"] == ranks[1]["rewards"][0]["gathered"]
    completions = ranks[0]["rewards"][0]["local_completions"] + ranks[1]["rewards"][0]["local_completions"]
    one_process = Processes(0, 1, list)
    rewards = torch.tensor(score_groups(trainer.diversity_reward, [""] * 4, completions, 4, processes=one_process))
    torch.testing.assert_close(torch.tensor(ranks[0]["rewards"][0]["gathered"]), rewards, atol=1e-5, rtol=1e-5)
    for index, rank in enumerate(ranks):  # each process keeps its own slice
        torch.testing.assert_close(torch.tensor(rank["rewards"][0]["local"]), rewards[2 * index : 2 * index + 2])

    batch = concatenate([rank["generated"][0] for rank in ranks], pad_id)
    advantages = trainer.args.diversity_coef * diversity_advantages(rewards, 4)
    torch.testing.assert_close(batch["advantages"], advantages, atol=1e-5, rtol=1e-5)

    # The sharded teacher gives the one-process teacher's guided hidden states.
    mask = batch["completion_mask"].bool()
    teacher_hidden = trainer.cfg_teacher.hidden_states(batch, conversational=True)
    torch.testing.assert_close(batch["teacher_hidden_states"][mask], teacher_hidden[mask], atol=1e-4, rtol=1e-4)

    # The loss the sharded run optimised (the mean of the ranks' losses) and its gradients, from one process. (GRPO
    # shuffled each rank's rows before its loss; a sum over rows does not see the order.)
    batch["advantages"], batch["teacher_hidden_states"] = advantages, teacher_hidden
    loss = trainer._compute_loss(trainer.model, batch)
    rank_losses = torch.stack([rank["losses"][0] for rank in ranks])
    assert all(torch.equal(rank["backward_loss"], rank["losses"][0]) for rank in ranks)
    torch.testing.assert_close(loss.detach(), rank_losses.mean(), atol=1e-5, rtol=1e-5)
    loss.backward()
    trainable = {name: p for name, p in trainer.model.named_parameters() if p.requires_grad}
    assert set(ranks[0]["grads"]) == set(trainable) == set(ranks[0]["trainable"])
    for name, parameter in trainable.items():
        torch.testing.assert_close(ranks[0]["grads"][name], parameter.grad, atol=1e-5, rtol=1e-4, msg=name)

    # Step 2: the student has moved, the teacher has not. The one-process trainer has not trained, so its teacher
    # is the initial policy; the sharded run's teacher must still give exactly that.
    batch = concatenate([rank["generated"][1] for rank in ranks], pad_id)
    mask = batch["completion_mask"].bool()
    teacher_hidden = trainer.cfg_teacher.hidden_states(batch, conversational=True)
    torch.testing.assert_close(batch["teacher_hidden_states"][mask], teacher_hidden[mask], atol=1e-4, rtol=1e-4)
    student, initial = ranks[0]["student"], ranks[0]["initial"]
    for name in student:
        moved = not torch.equal(student[name], initial[name])
        assert moved == (name in trainable), f"{name}: moved={moved}, trainable={name in trainable}"
    losses = [entry["loss"] for entry in ranks[0]["log_history"] if "loss" in entry]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))


def test_the_embedder_stays_whole_under_deepspeed_zero3():
    """Under ZeRO-3, transformers partitions every model it loads; the diversity embedder must stay whole (it runs
    outside any DeepSpeed engine), and the ZeRO-3 switch must be back on afterwards for the models that need it."""
    from accelerate.utils.deepspeed import HfDeepSpeedConfig  # transformers' subclass insists on deepspeed itself
    from transformers.integrations import (
        is_deepspeed_zero3_enabled,
        set_hf_deepspeed_config,
        unset_hf_deepspeed_config,
    )

    zero3 = HfDeepSpeedConfig({"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": 1})
    set_hf_deepspeed_config(zero3)
    try:
        assert is_deepspeed_zero3_enabled()
        embedder = load_embedder(None)
        assert is_deepspeed_zero3_enabled()
    finally:
        unset_hf_deepspeed_config()
    del zero3
    assert all(parameter.numel() > 0 and not hasattr(parameter, "ds_id") for parameter in embedder.parameters())
    assert embed(embedder, ["a quiet harbour at dawn"]).shape == (1, 384)
