"""Train one of the method's trainers for two steps with TRL's vLLM colocate mode, and write what a test checks.

    python tests/scripts/vllm_colocate_run.py TRAINER(grpo|rloo) full|lora CHECKPOINT OUTPUT_JSON

Runs in the vLLM environment (`scripts/setup_vllm.sh`), one run per process: vLLM initialises torch.distributed and
its engine once per process. Writes to OUTPUT_JSON:
- `weights_equal_trained`: after a last sync, every weight vLLM generates with equals the trained model's (with LoRA,
  merged), cast to vLLM's dtype; and `weights_moved`: training changed them, so the comparison is not vacuous;
- `log_history`, the trainer's logs (the method's metrics among them);
- `group_sizes` and `group_prompts_distinct`: what the group reward saw, group by group.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

# Before vLLM is imported: a 1 GiB KV cache on a CPU, and two threads (without it, vLLM cuts torch to one thread for
# the whole process).
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ["HF_HUB_OFFLINE"] = "1"

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # toy_group_rewards, tiny

import torch  # noqa: E402
import toy_group_rewards  # noqa: E402
from datasets import Dataset  # noqa: E402
from peft import LoraConfig  # noqa: E402

from trl_diversity import (  # noqa: E402
    DiversityCFGConfig,
    DiversityCFGRLOOConfig,
    DiversityCFGRLOOTrainer,
    DiversityCFGTrainer,
)

NUM_GENERATIONS = 4


def vllm_fused(state: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    """The trained weight vLLM holds under `name`: its Llama fuses q/k/v and gate/up into one matrix each."""
    if ".qkv_proj." in name:
        return torch.cat([state[name.replace("qkv_proj", part)] for part in ("q_proj", "k_proj", "v_proj")])
    if ".gate_up_proj." in name:
        return torch.cat([state[name.replace("gate_up_proj", part)] for part in ("gate_proj", "up_proj")])
    return state[name]


def trained_state(model) -> dict[str, torch.Tensor]:
    """The weights the policy generates with: with LoRA, the adapter merged into a copy of the base."""
    if hasattr(model, "merge_and_unload"):
        model.merge_adapter()
        try:
            state = {
                name.removeprefix("base_model.model.").replace(".base_layer", ""): p.detach().clone()
                for name, p in model.named_parameters()
                if "lora_" not in name
            }
        finally:
            model.unmerge_adapter()
        return state
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def main(algorithm: str, variant: str, checkpoint: str, output: str) -> None:
    config_class, trainer_class = {
        "grpo": (DiversityCFGConfig, DiversityCFGTrainer),
        "rloo": (DiversityCFGRLOOConfig, DiversityCFGRLOOTrainer),
    }[algorithm]
    args = config_class(
        output_dir=str(Path(output).parent / f"run-{algorithm}-{variant}"),
        max_steps=2,
        per_device_train_batch_size=8,
        num_generations=NUM_GENERATIONS,
        max_completion_length=8,
        learning_rate=1e-2,  # large, so that two steps visibly move the weights vLLM must receive
        logging_steps=1,
        report_to="none",
        use_cpu=True,
        save_strategy="no",
        seed=0,
        diversity_coef=1.0,
        guidance_scale=3.0,
        diversity_reward="toy_group_rewards:rank_by_length",
        use_vllm=True,
        vllm_mode="colocate",
        vllm_gpu_memory_utilization=0.3,  # on a CPU, the share of RAM vLLM reserves
        vllm_enable_sleep_mode=False,
        vllm_max_model_length=256,  # the tiny model's max_position_embeddings
    )
    prompts = [f"Name a colour number {i}." for i in range(8)]
    dataset = Dataset.from_dict({"prompt": [[{"role": "user", "content": p}] for p in prompts]})
    peft_config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear") if variant == "lora" else None
    trainer = trainer_class(model=checkpoint, args=args, train_dataset=dataset, peft_config=peft_config)
    before = trained_state(trainer.model)
    trainer.train()

    # The last optimizer step happened after the last generation: sync once more, as the next step would.
    generation = trainer.vllm_generation
    generation.sync_weights()
    vllm_model = generation.llm.llm_engine.model_executor.driver_worker.model_runner.model
    after = trained_state(trainer.model)
    unequal, moved = {}, False
    compared = [name for name, _ in vllm_model.named_parameters()]
    for name, held in vllm_model.named_parameters():
        expected = vllm_fused(after, name).to(held.dtype)
        # vLLM pads the vocabulary of the embedding and the LM head (to a multiple of 64): the padding rows aside.
        held = held.detach().cpu()[: expected.shape[0]]
        if not torch.equal(held, expected):
            unequal[name] = (held.float() - expected.float()).abs().max().item()
        moved |= not torch.equal(vllm_fused(after, name), vllm_fused(before, name))
    groups = toy_group_rewards.GROUPS
    result = {
        "vllm_dtype": str(next(vllm_model.parameters()).dtype),
        "compared": compared,
        "weights_equal_trained": not unequal,
        "unequal": unequal,  # name: largest difference
        "weights_moved": moved,
        "log_history": trainer.state.log_history,
        "group_sizes": [len(completions) for _, completions in groups],
        "group_prompts": [prompt for prompt, _ in groups],
    }
    Path(output).write_text(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main(*sys.argv[1:5])
