"""Run under `accelerate launch --multi_gpu --num_processes 2` on CPU (gloo): a short DiversityCFGTrainer run whose
prompt groups span both processes. The main process writes the last step's completions and their diversity rewards,
as gathered and logged by the trainer, for the test to recompute on one process."""

import json
import os
import sys

import torch
from transformers import AutoTokenizer

from trl_diversity import DiversityCFGConfig, DiversityCFGTrainer
from trl_diversity.data import load_prompts
from trl_diversity.rewards.text import completion_text

torch.set_num_threads(1)
checkpoint, output_dir = sys.argv[1], sys.argv[2]
args = DiversityCFGConfig(
    output_dir=output_dir,
    use_cpu=True,
    bf16=False,
    max_steps=2,
    per_device_train_batch_size=2,  # 2 processes x 2 = one group of 4: every group spans both processes
    num_generations=4,
    max_completion_length=8,
    learning_rate=1e-3,
    logging_steps=1,
    report_to="none",
    save_strategy="no",
    gradient_checkpointing=False,
)
trainer = DiversityCFGTrainer(
    model=checkpoint,
    args=args,
    train_dataset=load_prompts("train", conversational=True, limit=8),
    processing_class=AutoTokenizer.from_pretrained(checkpoint),
)
trainer.train()
trainer.save_model(output_dir)
if trainer.accelerator.is_main_process:
    result = {
        "num_processes": trainer.accelerator.num_processes,
        "completions": [completion_text(c) for c in trainer._logs["completion"]],
        "diversity": list(trainer._logs["extra"]["diversity_reward"]),
        "log_history": trainer.state.log_history,
    }
    with open(os.path.join(output_dir, "result.json"), "w") as f:
        json.dump(result, f)
