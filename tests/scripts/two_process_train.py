"""Run under `accelerate launch` with the 2-process CPU config (gloo): group rewards whose groups span processes.

1. A DiversityCFGTrainer run (default method: embedding diversity term, distillation) with 2 completions per process
   and groups of 4, so that every group spans both processes, and with group rewards as quality rewards through
   `as_reward_function`: the lexical and partition measures and a user reward (a toy ranking that records the
   groups it scores).
2. A plain `trl.GRPOTrainer` run with the user reward through `as_reward_function`, 6 completions per process: 3
   groups per step, the middle one spanning the processes, the groups shared out between them.
3. A DiversityCFGRLOOTrainer run with a diversity target (embedding measure, no quality reward), 2 completions per
   process: RLOO's groups span the processes too, and the controller's coefficient must be the same on both.

The main process writes, per step, what the trainers logged (gathered over processes) and each process's own
advantages and scored groups, for the test to recompute on one process.
"""

import json
import os
import sys

import torch
from accelerate.utils import gather_object
from transformers import AutoTokenizer
from trl import GRPOConfig, GRPOTrainer

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/, for toy_group_rewards
import toy_group_rewards  # noqa: E402

from trl_diversity import (  # noqa: E402
    DiversityCFGConfig,
    DiversityCFGRLOOConfig,
    DiversityCFGRLOOTrainer,
    DiversityCFGTrainer,
)
from trl_diversity.data import load_prompts  # noqa: E402
from trl_diversity.rewards import LexicalDiversity, PartitionDiversity, as_reward_function  # noqa: E402
from trl_diversity.rewards.text import completion_text  # noqa: E402
from trl_diversity.trainer.shutdown import end_distributed_run  # noqa: E402

torch.set_num_threads(1)
checkpoint, output_dir = sys.argv[1], sys.argv[2]
K = 4
TINY = dict(
    use_cpu=True,
    bf16=False,
    max_steps=2,
    num_generations=K,
    max_completion_length=8,
    learning_rate=1e-3,
    logging_steps=1,
    report_to="none",
    save_strategy="no",
    gradient_checkpointing=False,
)


class Recorded:
    """Per step: the global batch as logged (prompts, completions, rewards) and this process's advantages."""

    def _generate_and_score_completions(self, inputs):
        coef = getattr(self, "diversity_coef", None)  # the coefficient this batch trains with
        self._algorithm_advantages = None
        output = super()._generate_and_score_completions(inputs)
        size = len(inputs) * self.accelerator.num_processes
        diversity = getattr(self, "_latest_diversity_rewards", None)
        self.recorded.append(
            {
                "prompts": [completion_text(p) for p in list(self._logs["prompt"])[-size:]],
                "completions": [completion_text(c) for c in list(self._logs["completion"])[-size:]],
                "rewards": {name: list(values)[-size:] for name, values in self._logs["rewards"].items()},
                # The algorithm's own advantages (before the diversity term), and the completions table's.
                "grpo_advantages": self._algorithm_advantages or list(self._logs["advantages"])[-size:],
                "table_advantages": list(self._logs["advantages"])[-size:],
                "diversity": None if diversity is None else diversity.tolist(),
                "local_advantages": output["advantages"].tolist(),
                "coef": coef,
            }
        )
        return output

    def _add_diversity_advantages(self, output, rewards, mode):
        self._algorithm_advantages = list(self._logs["advantages"])[-rewards.numel() :]
        super()._add_diversity_advantages(output, rewards, mode)


class RecordedDiversityCFGTrainer(Recorded, DiversityCFGTrainer):
    recorded = []


class RecordedGRPOTrainer(Recorded, GRPOTrainer):
    recorded = []


class RecordedDiversityCFGRLOOTrainer(Recorded, DiversityCFGRLOOTrainer):
    recorded = []


def finish(trainer, calls):
    """Everything the test needs, with each process's own part gathered in rank order."""
    own = {"advantages": [s["local_advantages"] for s in trainer.recorded], "calls": calls}
    own["coefs"] = [s["coef"] for s in trainer.recorded]
    per_process = gather_object([own])
    return {"steps": trainer.recorded, "processes": per_process, "log_history": trainer.state.log_history}


tokenizer = AutoTokenizer.from_pretrained(checkpoint)
quality = [
    as_reward_function(LexicalDiversity(), K, name="lexical"),
    as_reward_function(PartitionDiversity(), K, name="partition"),
    as_reward_function(toy_group_rewards.rank_by_length, K),
]
ours = RecordedDiversityCFGTrainer(
    model=checkpoint,
    args=DiversityCFGConfig(output_dir=output_dir, per_device_train_batch_size=2, **TINY),
    train_dataset=load_prompts("train", conversational=True, limit=8),
    processing_class=tokenizer,
    reward_funcs=quality,
)
ours.train()
ours.save_model(output_dir)
result = {"num_processes": ours.accelerator.num_processes, "diversity_coef": ours.args.diversity_coef}
result["ours"] = finish(ours, list(toy_group_rewards.CALLS))

toy_group_rewards.CALLS.clear()
grpo = RecordedGRPOTrainer(
    model=checkpoint,
    args=GRPOConfig(output_dir=os.path.join(output_dir, "grpo"), per_device_train_batch_size=6, **TINY),
    train_dataset=load_prompts("train", conversational=True, limit=12),
    processing_class=tokenizer,
    reward_funcs=as_reward_function(toy_group_rewards.rank_by_length, K),
)
grpo.train()
result["grpo"] = finish(grpo, list(toy_group_rewards.CALLS))

rloo = RecordedDiversityCFGRLOOTrainer(
    model=checkpoint,
    args=DiversityCFGRLOOConfig(
        output_dir=os.path.join(output_dir, "rloo"),
        per_device_train_batch_size=2,
        diversity_target=2.0,  # the embedding measure's maximum: above any batch's mean, so the coefficient rises
        diversity_coef=4.0,
        distill_coef=0.0,
        **TINY,
    ),
    train_dataset=load_prompts("train", conversational=True, limit=8),
    processing_class=tokenizer,
)
rloo.train()
result["rloo"] = finish(rloo, [])

if ours.accelerator.is_main_process:
    with open(os.path.join(output_dir, "result.json"), "w") as f:
        json.dump(result, f)
end_distributed_run(rloo.accelerator)
