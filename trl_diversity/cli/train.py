"""`trl-diversity train`: run a YAML recipe (plus flag overrides), or, with no arguments, the default job.

Parsed the way TRL's own scripts parse theirs: `TrlParser` over the script arguments below, `DiversityCFGConfig`
and TRL's `ModelConfig` (whose LoRA flags become a `peft_config`). A recipe's keys set the defaults and command-line
flags override them; an unknown key is an error that names it.

The default job finetunes SmolLM2-135M-Instruct (the embedded offline default) with LoRA on the bundled prompts for
a CPU-sized budget, then prints a before/after table.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from trl_diversity.atomic import write_text_atomic
from trl_diversity.data import load_prompts
from trl_diversity.defaults import resolve_model
from trl_diversity.trainer.diversity_cfg_config import DiversityCFGConfig

# The default job: what `trl-diversity train` runs with no recipe. About 10 minutes on 2 CPU cores.
DEFAULT_JOB = {
    "model_name_or_path": "default",
    "use_peft": True,
    "lora_r": 16,
    "lora_alpha": 32,
    "lora_target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "output_dir": "outputs/default",
    "max_steps": 24,
    "learning_rate": 2.0e-4,
    "per_device_train_batch_size": 8,
    "num_generations": 4,
    "max_completion_length": 48,
    "temperature": 1.0,
    "logging_steps": 1,
    "save_steps": 8,
    "save_total_limit": 2,
    "report_to": "none",
    "gradient_checkpointing": False,
    "guidance_scale": 3.0,
    "diversity_coef": 15.0,
    "seed": 0,
}


@dataclass
class TrainScriptArguments:
    """What to train on and how to report; the model and training fields live in ModelConfig and the config."""

    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "Hub id, local folder or data file (.json/.jsonl/.csv/.parquet) with a `prompt` column. None uses "
            "the bundled creative-writing prompts."
        },
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Configuration name of the hub dataset."})
    dataset_train_split: str = field(default="train", metadata={"help": "Split to train on."})
    prompt_format: str = field(
        default="conversational",
        metadata={
            "help": "Format of the bundled prompts: 'conversational' (rendered with the chat template) or 'standard' "
            "(plain text). Ignored for other datasets, whose own format is used.",
            "choices": ["conversational", "standard"],
        },
    )
    max_train_prompts: int | None = field(default=None, metadata={"help": "Train on the first N prompts only."})
    report_prompts: int = field(
        default=6,
        metadata={"help": "Evaluation prompts in the before/after table printed at the end; 0 skips it."},
    )
    report_samples: int = field(default=4, metadata={"help": "Samples per prompt in the before/after table."})


def parse(argv: list[str]):
    from trl import ModelConfig, TrlParser

    parser = TrlParser((TrainScriptArguments, DiversityCFGConfig, ModelConfig))
    if argv and not argv[0].startswith("-"):
        argv = ["--config", argv[0], *argv[1:]]  # `train recipe.yaml --flag value`
    if "--config" not in argv:
        parser.set_defaults_with_config(**DEFAULT_JOB)
    if not torch.cuda.is_available() and "--use_cpu" not in argv:
        parser.set_defaults_with_config(use_cpu=True, bf16=False)
    return parser.parse_args_and_config(argv)


def load_train_dataset(script_args: TrainScriptArguments):
    from datasets import load_dataset

    if script_args.dataset_name is None:
        dataset = load_prompts(
            "train", conversational=script_args.prompt_format == "conversational", limit=script_args.max_train_prompts
        )
    else:
        name = script_args.dataset_name
        suffix = Path(name).suffix.lstrip(".")
        if Path(name).is_file():
            builder = {"jsonl": "json"}.get(suffix, suffix)
            dataset = load_dataset(builder, data_files=name, split="train")
        else:
            dataset = load_dataset(name, script_args.dataset_config, split=script_args.dataset_train_split)
        if script_args.max_train_prompts is not None:
            dataset = dataset.select(range(min(script_args.max_train_prompts, len(dataset))))
    if "prompt" not in dataset.column_names:
        raise ValueError(
            f"The training dataset has no `prompt` column (columns: {dataset.column_names}). Rename the column that "
            "holds the prompts to `prompt`."
        )
    return dataset


def build_trainer(script_args: TrainScriptArguments, training_args: DiversityCFGConfig, model_args):
    """The trainer a parsed `train` command runs: model (or `default`), tokenizer, dataset and LoRA resolved."""
    from transformers import AutoTokenizer
    from trl import get_peft_config

    from trl_diversity.trainer.diversity_cfg_trainer import DiversityCFGTrainer

    model_path = resolve_model(model_args.model_name_or_path)
    training_args.model_init_kwargs = {
        **(training_args.model_init_kwargs or {}),
        **({"dtype": model_args.dtype} if model_args.dtype else {}),
        **({"attn_implementation": model_args.attn_implementation} if model_args.attn_implementation else {}),
        **({"revision": model_args.model_revision} if model_args.model_revision != "main" else {}),
    }
    tokenizer = AutoTokenizer.from_pretrained(model_path, padding_side="left")
    return DiversityCFGTrainer(
        model=model_path,
        args=training_args,
        train_dataset=load_train_dataset(script_args),
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
    )


def main(argv: list[str] | None = None) -> None:
    script_args, training_args, model_args = parse(list(sys.argv[1:] if argv is None else argv))
    load_train_dataset(script_args)  # a bad dataset fails before the base model is measured

    report = None
    if script_args.report_prompts > 0:
        from transformers import AutoTokenizer

        from trl_diversity.toolkit.report import BeforeAfterReport

        model_path = resolve_model(model_args.model_name_or_path)
        report = BeforeAfterReport(
            training_args,
            AutoTokenizer.from_pretrained(model_path, padding_side="left"),
            script_args.report_prompts,
            script_args.report_samples,
            chat=script_args.prompt_format == "conversational",
        )
        report.measure_base(model_path)

    trainer = build_trainer(script_args, training_args, model_args)
    trainer.train(resume_from_checkpoint=_resume_argument(training_args.resume_from_checkpoint))
    if trainer.interrupted:
        if trainer.accelerator.is_main_process:
            print(
                f"Interrupted at step {trainer.state.global_step}; a checkpoint was saved in "
                f"{training_args.output_dir}. Resume with the same command plus --resume_from_checkpoint true."
            )
        return
    trainer.save_model(training_args.output_dir)
    if trainer.accelerator.is_main_process:
        print(f"Saved the finetuned {'adapter' if model_args.use_peft else 'model'} to {training_args.output_dir}")
        if report is not None:
            report.measure_finetuned(trainer.accelerator.unwrap_model(trainer.model))
            table = report.markdown()
            print(table)
            out = Path(training_args.output_dir)
            write_text_atomic(out / "before_after.md", table + "\n")
            write_text_atomic(out / "before_after.json", json.dumps(report.rows, indent=2) + "\n")


def _resume_argument(value: str | None) -> str | bool | None:
    """`--resume_from_checkpoint true` resumes from the latest checkpoint in output_dir; a path names one."""
    if isinstance(value, str) and value.lower() in ("true", "latest"):
        return True
    if isinstance(value, str) and value.lower() in ("false", "none", ""):
        return None
    return value
