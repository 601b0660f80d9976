"""Run under `accelerate launch --config_file recipes/accelerate_configs/fsdp2.yaml --num_processes 2
--mixed_precision no` on CPU (gloo): two DiversityCFGTrainer steps under FSDP2, recording what the test compares
against a one-process run on the same completions.

    python fsdp2_train.py CHECKPOINT OUTPUT_DIR {copy,lora}

`copy`: full finetune, the teacher is a frozen copy of the initial policy (prepared with TRL's `prepare_fsdp`);
`lora`: LoRA, the teacher is the base model with the adapter disabled.

Accelerate turns FSDP on only for GPU-type distributed states (`AcceleratorState` ignores the FSDP plugin under
MULTI_CPU and silently trains with DDP instead). So this script sets up the gloo process group itself, marks the
shared state as MULTI_GPU, and hands it to the Trainer (`accelerator_config={"use_configured_state": True}`); from
there, Accelerate's own FSDP2 preparation (`fully_shard` per decoder layer and at the root, the config's
`fsdp_*` settings) runs unchanged on CPU tensors.

Each rank writes `rank{R}.pt`: the initial parameters (LoRA's random `A` included), both steps' generated batches
(GRPO's `_generate_and_score_completions` output, teacher hidden states included) and losses, the diversity rewards as
gathered by the trainer, what the distillation loss got as LM heads, the full (gathered) gradients of the first
backward, and after training the full parameters of the student and of the teacher.
"""

import os
import sys

import torch
from accelerate import PartialState
from accelerate.utils import DistributedType
from torch.distributed.tensor import DTensor
from transformers import AutoTokenizer

import trl_diversity.trainer.divergence as divergence
from trl_diversity import DiversityCFGConfig, DiversityCFGTrainer
from trl_diversity.data import load_prompts
from trl_diversity.rewards.embedder import completion_text

torch.set_num_threads(1)
checkpoint, output_dir, teacher_kind = sys.argv[1], sys.argv[2], sys.argv[3]
if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true":
    sys.exit("Launch this script with an FSDP Accelerate config (see the module docstring).")

state = PartialState(cpu=True)  # torchrun's environment: a gloo process group on CPU
state.distributed_type = DistributedType.MULTI_GPU  # so that AcceleratorState takes the FSDP plugin

peft_config = None
if teacher_kind == "lora":
    from peft import LoraConfig

    peft_config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
args = DiversityCFGConfig(
    output_dir=output_dir,
    use_cpu=True,
    bf16=False,
    max_steps=2,
    per_device_train_batch_size=2,  # 2 processes x 2 = one group of 4: the group spans both processes
    num_generations=4,
    max_completion_length=8,
    learning_rate=1e-2,
    logging_steps=1,
    report_to="none",
    save_strategy="no",
    gradient_checkpointing=False,
    seed=0,
    accelerator_config={"use_configured_state": True},
)
trainer = DiversityCFGTrainer(
    model=checkpoint,
    args=args,
    train_dataset=load_prompts("train", conversational=True, limit=8),
    processing_class=AutoTokenizer.from_pretrained(checkpoint),
    peft_config=peft_config,
)
assert trainer.is_fsdp_enabled and trainer.accelerator.is_fsdp2, trainer.accelerator.distributed_type

record = {"generated": [], "losses": [], "heads": [], "rewards": [], "grads": None}


def full(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor on every rank (a collective for FSDP2's sharded DTensors)."""
    return (tensor.full_tensor() if isinstance(tensor, DTensor) else tensor).detach().clone()


original_weight_and_bias = divergence._weight_and_bias


def recording_weight_and_bias(head):
    weight = head if isinstance(head, torch.Tensor) else head.weight
    gathered, bias = original_weight_and_bias(head)
    record["heads"].append(
        {
            "sharded": isinstance(weight, DTensor),
            "local_rows": (weight.to_local() if isinstance(weight, DTensor) else weight).shape[0],
            "rows": gathered.shape[0],
            "gathered_is_dtensor": isinstance(gathered, DTensor),
        }
    )
    return gathered, bias


divergence._weight_and_bias = recording_weight_and_bias

original_diversity = trainer.diversity


def recording_diversity(prompts, completions, **kwargs):
    local = original_diversity(prompts, completions, **kwargs)
    record["rewards"].append(
        {
            "local_completions": [completion_text(c) for c in completions],
            "local": local,
            "gathered": trainer._latest_diversity_rewards.tolist(),
        }
    )
    return local


# GRPO looks its reward functions up in a list built at construction: replace the entry, not only the attribute.
trainer.reward_funcs[trainer.reward_funcs.index(original_diversity)] = recording_diversity

original_generate_and_score = trainer._generate_and_score_completions


def recording_generate_and_score(inputs):
    # Recorded here, in the order of the rewards: GRPO shuffles the rows before `_compute_loss` sees them.
    output = original_generate_and_score(inputs)
    record["generated"].append(
        {k: v.detach().clone() if isinstance(v, torch.Tensor) else v for k, v in output.items()}
    )
    return output


trainer._generate_and_score_completions = recording_generate_and_score

original_compute_loss = trainer._compute_loss


def recording_compute_loss(model, inputs):
    if not record["losses"]:  # before the first optimizer step: the initial parameters as FSDP prepared them
        record["initial"] = {name: full(p) for name, p in trainer.model.named_parameters()}
    loss = original_compute_loss(model, inputs)
    record["losses"].append(loss.detach().clone())
    return loss


trainer._compute_loss = recording_compute_loss

original_backward = trainer.accelerator.backward


def recording_backward(loss, **kwargs):
    original_backward(loss, **kwargs)
    if record["grads"] is None:  # the first step: full gradients after FSDP's reduce-scatter (averaged over ranks)
        record["backward_loss"] = loss.detach().clone()
        record["grads"] = {name: full(p.grad) for name, p in trainer.model.named_parameters() if p.grad is not None}


trainer.accelerator.backward = recording_backward

trainer.train()

model = trainer.model
record["sharded_parameters"] = sum(isinstance(p, DTensor) for p in model.parameters())
record["student"] = {name: full(p) for name, p in model.named_parameters()}
record["trainable"] = sorted(name for name, p in model.named_parameters() if p.requires_grad)
if trainer.teacher is not None:
    teacher = trainer.teacher
    record["teacher_type"] = type(teacher).__name__
    record["teacher"] = {name: full(p) for name, p in teacher.named_parameters()}
    record["teacher_requires_grad"] = any(p.requires_grad for p in teacher.parameters())
    record["teacher_sharded_parameters"] = sum(isinstance(p, DTensor) for p in teacher.parameters())
record["log_history"] = trainer.state.log_history
record["num_processes"] = trainer.accelerator.num_processes
torch.save(record, os.path.join(output_dir, f"rank{trainer.accelerator.process_index}.pt"))
