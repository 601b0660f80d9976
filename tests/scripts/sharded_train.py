"""Two DiversityCFGTrainer steps, sharded over CPU processes (gloo), recording what the test compares against a
one-process run on the same completions. Run under `accelerate launch` with one of the shipped GPU configs and
`--num_processes 2 --mixed_precision no`:

    accelerate launch --config_file recipes/accelerate_configs/{fsdp2,deepspeed_zero2,deepspeed_zero3}.yaml \\
        --num_processes 2 --mixed_precision no tests/scripts/sharded_train.py CHECKPOINT OUTPUT_DIR {copy,lora}

`copy`: full finetune, the teacher is a frozen copy of the initial policy (prepared with TRL's `prepare_fsdp` /
`prepare_deepspeed`, like GRPO's reference model); `lora`: LoRA, the teacher is the base model with the adapter
disabled.

Accelerate turns FSDP and DeepSpeed on only for accelerator devices: on CPU, `AcceleratorState` ignores the FSDP
plugin (and refuses DeepSpeed) and silently trains with plain DDP. So this script sets up the gloo process group
itself and hands that state to the Trainer (`accelerator_config={"use_configured_state": True}`), marked as a GPU
state for FSDP, and with `use_cpu=False` for DeepSpeed (whose CPU accelerator then runs on gloo). From there,
Accelerate's own preparation (FSDP2's `fully_shard` per decoder layer and at the root; the DeepSpeed engine with the
config's ZeRO stage) runs unchanged on CPU tensors.

The distillation loss runs TRL's chunked kernel (`allow_full_logits=False`), the path GPU users get, instead of the
full-logits shortcut that CPU runs take at these sizes: the kernel is where the ZeRO-3 LM heads are gathered.

Each rank writes `rank{R}.pt`: the initial parameters (LoRA's random `A` included), both steps' generated batches
(GRPO's `_generate_and_score_completions` output, teacher hidden states included) and losses, the diversity rewards
as gathered by the trainer, what the distillation loss got as LM heads and what the kernel projected with, the full
gradients of the first step (after the backend's reduction), and after training the full parameters of the student
and of the teacher.
"""

import functools
import os
import sys

import torch
import trl.kernels.chunked_divergence as kernel
from accelerate import PartialState
from accelerate.utils import DistributedType
from torch.distributed.tensor import DTensor
from transformers import AutoTokenizer

import trl_diversity.trainer.divergence as divergence
import trl_diversity.trainer.method as trainer_module
from trl_diversity import DiversityCFGConfig, DiversityCFGTrainer
from trl_diversity.data import load_prompts
from trl_diversity.rewards.embedder import completion_text
from trl_diversity.trainer.shutdown import end_distributed_run

torch.set_num_threads(1)
checkpoint, output_dir, teacher_kind = sys.argv[1], sys.argv[2], sys.argv[3]
if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
    backend = "fsdp2"
elif os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
    backend = "deepspeed"
else:
    sys.exit("Launch this script with an FSDP or DeepSpeed Accelerate config (see the module docstring).")

state = PartialState(cpu=True)  # torchrun's environment: a gloo process group on CPU
if backend == "fsdp2":
    state.distributed_type = DistributedType.MULTI_GPU  # so that AcceleratorState takes the FSDP plugin

peft_config = None
if teacher_kind == "lora":
    from peft import LoraConfig

    peft_config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
args = DiversityCFGConfig(
    output_dir=output_dir,
    use_cpu=backend == "fsdp2",  # AcceleratorState refuses DeepSpeed on a `cpu` state; the device stays the CPU
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
if backend == "fsdp2":
    assert trainer.is_fsdp_enabled and trainer.accelerator.is_fsdp2, trainer.accelerator.distributed_type
else:
    assert trainer.is_deepspeed_enabled, trainer.accelerator.distributed_type

record = {"backend": backend, "generated": [], "losses": [], "heads": [], "projections": set(), "rewards": []}
record["grads"] = None


def is_zero3(parameter: torch.Tensor) -> bool:
    return hasattr(parameter, "ds_id")


def full(parameter: torch.Tensor) -> torch.Tensor:
    """The whole tensor on every rank (a collective for FSDP2's DTensors and ZeRO-3's partitioned parameters)."""
    if isinstance(parameter, DTensor):
        return parameter.full_tensor().detach().clone()
    if is_zero3(parameter):
        import deepspeed

        with deepspeed.zero.GatheredParameters([parameter]):
            return parameter.detach().clone()
    return parameter.detach().clone()


def unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model  # a DeepSpeed engine keeps the model in `.module`


def sharding(parameters) -> dict:
    kinds = {"dtensor": 0, "zero3": 0, "plain": 0}
    for parameter in parameters:
        kinds["dtensor" if isinstance(parameter, DTensor) else "zero3" if is_zero3(parameter) else "plain"] += 1
    return kinds


# The GPU path of the distillation loss: always TRL's chunked kernel.
trainer_module.chunked_token_divergence = functools.partial(
    trainer_module.chunked_token_divergence, allow_full_logits=False
)

original_weight_and_bias = divergence._weight_and_bias


def recording_weight_and_bias(head):
    weight = head if isinstance(head, torch.Tensor) else head.weight
    gathered, bias = original_weight_and_bias(head)
    local = weight.to_local() if isinstance(weight, DTensor) else weight
    record["heads"].append(
        {
            "kind": "dtensor" if isinstance(weight, DTensor) else "zero3" if is_zero3(weight) else "plain",
            "local_rows": local.shape[0],
            "rows": divergence.head_rows(gathered),
            "passed_on_as_dtensor": isinstance(gathered, DTensor),
        }
    )
    return gathered, bias


divergence._weight_and_bias = recording_weight_and_bias

original_project = kernel._project


def recording_project(tile, hidden_chunk, weight, bias, start, end, dtype):
    record["projections"].add(weight.shape[0])  # the rows of the head the kernel's tiles are cut from
    return original_project(tile, hidden_chunk, weight, bias, start, end, dtype)


kernel._project = recording_project

original_score_diversity = trainer._score_diversity


def recording_score_diversity(inputs, prompts, completions, completion_ids_list):
    gathered = original_score_diversity(inputs, prompts, completions, completion_ids_list)
    start = trainer.accelerator.process_index * len(completions)
    record["rewards"].append(
        {
            "local_completions": [completion_text(c) for c in completions],
            "local": gathered[start : start + len(completions)].tolist(),
            "gathered": gathered.tolist(),
        }
    )
    return gathered


# The diversity term is scored, across processes, in `_calculate_rewards` through this method.
trainer._score_diversity = recording_score_diversity

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
    if not record["losses"]:  # before the first optimizer step: the initial parameters as the backend prepared them
        record["initial"] = {name: full(p) for name, p in trainer.model.named_parameters()}
    loss = original_compute_loss(model, inputs)
    record["losses"].append(loss.detach().clone())
    return loss


trainer._compute_loss = recording_compute_loss


def record_gradients():
    """The first step's full gradients, reduced (averaged) over the ranks, before the optimizer uses them."""
    if record["grads"] is not None:
        return
    if backend == "fsdp2":
        gradients = {name: p.grad for name, p in trainer.model.named_parameters() if p.grad is not None}
        record["grads"] = {name: full(grad) for name, grad in gradients.items()}
    else:
        from deepspeed.utils import safe_get_full_grad

        trainable = [(name, p) for name, p in trainer.model.named_parameters() if p.requires_grad]
        record["grads"] = {name: safe_get_full_grad(p).detach().clone() for name, p in trainable}


if backend == "fsdp2":
    original_backward = trainer.accelerator.backward

    def recording_backward(loss, **kwargs):
        record.setdefault("backward_loss", loss.detach().clone())
        original_backward(loss, **kwargs)
        record_gradients()

    trainer.accelerator.backward = recording_backward
else:
    # Accelerate's DeepSpeed backward runs the engine's optimizer step too: read the gradients just before it.
    from deepspeed.runtime.engine import DeepSpeedEngine

    original_step = DeepSpeedEngine.step
    original_engine_backward = DeepSpeedEngine.backward

    def recording_engine_backward(self, loss, *args, **kwargs):
        record.setdefault("backward_loss", loss.detach().clone())
        return original_engine_backward(self, loss, *args, **kwargs)

    def recording_step(self, *args, **kwargs):
        record_gradients()
        return original_step(self, *args, **kwargs)

    DeepSpeedEngine.backward = recording_engine_backward
    DeepSpeedEngine.step = recording_step

trainer.train()

model = trainer.model
record["sharding"] = sharding(model.parameters())
record["student"] = {name: full(p) for name, p in model.named_parameters()}
record["trainable"] = sorted(name for name, p in model.named_parameters() if p.requires_grad)
if trainer.teacher is not None:
    teacher = unwrapped(trainer.teacher)
    record["teacher_wrapper"] = type(trainer.teacher).__name__
    record["teacher"] = {name: full(p) for name, p in teacher.named_parameters()}
    record["teacher_requires_grad"] = any(p.requires_grad for p in teacher.parameters())
    record["teacher_sharding"] = sharding(teacher.parameters())
record["log_history"] = trainer.state.log_history
record["num_processes"] = trainer.accelerator.num_processes
torch.save(record, os.path.join(output_dir, f"rank{trainer.accelerator.process_index}.pt"))
end_distributed_run(trainer.accelerator)
