"""The before/after table that ends the default job: base model, base model with CFG, finetuned model.

Each row: prompt adherence (embedding cosine of prompt and completion) and pairwise diversity (mean `1 - cos`
between one prompt's samples), averaged over a few bundled evaluation prompts, plus the generation cost in forward
passes per token. (Not wall-clock time: a few prompts' generation time measures the machine's load more than the
model, and once showed CFG 4x faster than the base model on a busy machine. `trl-diversity evaluate` reports
tokens per second over a full evaluation set.)
"""

from __future__ import annotations

import torch

from trl_diversity.data import load_prompts
from trl_diversity.rewards.embedder import load_embedder
from trl_diversity.toolkit.evaluation import summarize
from trl_diversity.toolkit.generation import generate_records


class BeforeAfterReport:
    def __init__(self, args, tokenizer, num_prompts: int, num_samples: int, chat: bool = True):
        self.args = args
        self.tokenizer = tokenizer
        self.prompts = load_prompts("eval", limit=num_prompts)["prompt"]
        self.num_samples = num_samples
        self.chat = chat
        self.embedder = load_embedder(args.diversity_embedder, device="cpu")
        self.rows: list[dict] = []

    def _measure(self, name: str, model, guidance_scale: float) -> None:
        records = list(
            generate_records(
                model,
                self.tokenizer,
                self.prompts,
                num_samples=self.num_samples,
                max_new_tokens=self.args.max_completion_length,
                guidance_scale=guidance_scale,
                null_prompt=self.args.unconditional_prompt,
                chat=self.chat,
                temperature=self.args.temperature,
                seed=self.args.seed,
                label=name,
            )
        )
        summary = summarize(records, self.embedder, chat=self.chat)[name]  # the same metrics as `evaluate`
        self.rows.append(
            {
                "model": name,
                "guidance_scale": guidance_scale,
                "prompt_adherence": summary["metrics"]["adherence"]["mean"],
                "pairwise_diversity": summary["metrics"]["pairwise_diversity"]["mean"],
                "forward_passes_per_token": summary["forward_passes_per_token"],
                "example": records[0]["completion"],
            }
        )

    def measure_base(self, model_path: str) -> None:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
        self._measure("base", model, 1.0)
        self._measure(f"base + CFG {self.args.guidance_scale:g}", model, self.args.guidance_scale)

    def measure_finetuned(self, model) -> None:
        self._measure("finetuned", model, 1.0)

    def markdown(self) -> str:
        lines = [
            f"Before/after on {len(self.prompts)} evaluation prompts x {self.num_samples} samples "
            f"({self.args.max_completion_length} new tokens, temperature {self.args.temperature:g}):",
            "",
            "| model | prompt adherence | pairwise diversity | forward passes / token |",
            "|---|---|---|---|",
        ]
        for row in self.rows:
            lines.append(
                f"| {row['model']} | {row['prompt_adherence']:.3f} | {row['pairwise_diversity']:.3f} | "
                f"{row['forward_passes_per_token']} |"
            )
        return "\n".join(lines)
