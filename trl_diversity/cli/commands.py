"""The `generate`, `evaluate`, `merge` and `sweep` sub-commands (argument parsing only; the work lives elsewhere)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _prompt_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--prompts",
        default="eval",
        help="'eval' or 'train' (the bundled prompts), or a .jsonl/.json/.txt file of prompts",
    )
    parser.add_argument("--num_prompts", type=int, default=None, help="use the first N prompts")
    parser.add_argument("--num_samples", type=int, default=4, help="samples per prompt (k)")
    parser.add_argument("--max_new_tokens", type=int, default=48)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--unconditional_prompt", default="", help="the null condition of CFG's unconditional branch")
    parser.add_argument("--no_chat", action="store_true", help="plain-text prompts instead of the chat template")
    parser.add_argument("--prompts_per_batch", type=int, default=4, help="prompts sampled together in one batch")


def load_prompt_list(spec: str, limit: int | None) -> list[str]:
    from trl_diversity.data import SPLITS, load_prompts

    if spec in SPLITS:
        prompts = load_prompts(spec)["prompt"]
    else:
        path = Path(spec)
        if not path.is_file():
            raise FileNotFoundError(f"Prompt file {spec} does not exist; pass 'eval', 'train' or a file of prompts.")
        if path.suffix in (".jsonl", ".json"):
            from datasets import load_dataset

            prompts = load_dataset("json", data_files=str(path), split="train")["prompt"]
        else:
            prompts = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    return list(prompts[:limit] if limit else prompts)


def _generate(args, name: str, prompts: list[str], base: str | None = None, label: str | None = None) -> list[dict]:
    """Records of `name`'s samples, with the prompt and CFG options of `args`."""
    from trl_diversity.toolkit.generation import generate_records, load_generation_model

    model, tokenizer = load_generation_model(name, base)
    label = label or (name if args.guidance_scale == 1 else f"{name} + CFG {args.guidance_scale:g}")
    return list(
        generate_records(
            model,
            tokenizer,
            prompts,
            num_samples=args.num_samples,
            max_new_tokens=args.max_new_tokens,
            guidance_scale=args.guidance_scale,
            null_prompt=args.unconditional_prompt,
            chat=not args.no_chat,
            temperature=args.temperature,
            seed=args.seed,
            prompts_per_batch=args.prompts_per_batch,
            label=label,
        )
    )


def generate(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="trl-diversity generate", description="Sample k completions per prompt.")
    parser.add_argument(
        "--model", default="default", help="checkpoint folder, LoRA adapter folder, hub id or 'default'"
    )
    parser.add_argument("--base", default=None, help="base model of a LoRA adapter (default: from its config)")
    parser.add_argument("--guidance_scale", type=float, default=1.0, help="CFG scale; 1 = no guidance")
    parser.add_argument("--label", default=None, help="model name recorded in the output (default: --model)")
    parser.add_argument("--output", required=True, help="JSONL file to write")
    _prompt_arguments(parser)
    args = parser.parse_args(argv)

    from trl_diversity.toolkit.generation import write_jsonl

    prompts = load_prompt_list(args.prompts, args.num_prompts)  # checked before the model loads
    records = _generate(args, args.model, prompts, base=args.base, label=args.label)
    print(f"Wrote {write_jsonl(records, args.output)}")


def evaluate(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="trl-diversity evaluate", description="Quality, diversity and cost of generations, per model."
    )
    parser.add_argument("generations", nargs="*", help="JSONL files written by `trl-diversity generate`")
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        help="also generate from this model first (repeatable; uses the prompt and CFG options)",
    )
    parser.add_argument("--guidance_scale", type=float, default=1.0, help="CFG scale for --model generations")
    parser.add_argument("--save_generations", default=None, help="JSONL file for the --model generations")
    parser.add_argument(
        "--embedder",
        default=None,
        help="sentence-transformers model for adherence and diversity (default: all-MiniLM-L6-v2); "
        "use another than the training embedder to check for reward hacking",
    )
    parser.add_argument(
        "--fluency_model", default="default", help="unguided base model for the fluency NLL ('none' to skip)"
    )
    parser.add_argument(
        "--reward",
        default=None,
        help="reward model folder/hub id, or module:function called like a GRPO reward function",
    )
    parser.add_argument("--output", required=True, help="JSON file to write (a .md table is written beside it)")
    _prompt_arguments(parser)
    args = parser.parse_args(argv)
    if not args.generations and not args.model:
        parser.error("give generation files, or --model to generate from")

    from trl_diversity.atomic import write_text_atomic
    from trl_diversity.rewards.embedder import load_embedder
    from trl_diversity.toolkit.evaluation import load_reward, markdown_table, summarize
    from trl_diversity.toolkit.generation import load_generation_model, read_jsonl

    records = [r for path in args.generations for r in read_jsonl(path)]
    if args.model:
        from trl_diversity.toolkit.generation import write_jsonl

        prompts = load_prompt_list(args.prompts, args.num_prompts)
        generated = [record for name in args.model for record in _generate(args, name, prompts)]
        if args.save_generations:
            write_jsonl(generated, args.save_generations)
        records += generated
    embedder = load_embedder(args.embedder, device="cpu")
    reward = load_reward(args.reward) if args.reward else None
    fluency = None if args.fluency_model.lower() == "none" else load_generation_model(args.fluency_model)
    summary = summarize(records, embedder, fluency=fluency, reward=reward, chat=not args.no_chat)
    output = Path(args.output)
    write_text_atomic(output, json.dumps(summary, indent=2))
    table = markdown_table(summary)
    write_text_atomic(output.with_suffix(".md"), table + "\n")
    print(table)


def merge(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="trl-diversity merge", description="Write (1 - w) * A + w * B for two checkpoints or two LoRA adapters."
    )
    parser.add_argument("model_a", help="weight 0: e.g. the quality-focused finetune")
    parser.add_argument("model_b", help="weight 1: e.g. the diversity-focused finetune")
    parser.add_argument("--weight", type=float, required=True, help="w in [0, 1]")
    parser.add_argument("--output", required=True, help="folder to write")
    parser.add_argument("--base", default=None, help="LoRA: the base model (default: from the adapters' configs)")
    parser.add_argument("--merged", action="store_true", help="LoRA: write a full checkpoint instead of an adapter")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    args = parser.parse_args(argv)

    from trl_diversity.toolkit.merging import lerp_merge

    path = lerp_merge(
        args.model_a,
        args.model_b,
        args.weight,
        args.output,
        base=args.base,
        merged=args.merged,
        overwrite=args.overwrite,
    )
    print(f"Wrote {path}")


def sweep(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="trl-diversity sweep", description="CFG sweep of the base model against a merge sweep of two finetunes."
    )
    parser.add_argument("--base", default="default", help="the base model (CFG sweep, fluency)")
    parser.add_argument("--quality_model", required=True, help="the quality-focused finetune (weight 0)")
    parser.add_argument("--diversity_model", required=True, help="the diversity-focused finetune (weight 1)")
    parser.add_argument("--guidance_scales", type=float, nargs="+", default=[1.0, 1.5, 2.0, 3.0])
    parser.add_argument("--weights", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0])
    parser.add_argument("--embedder", default=None, help="evaluation embedder (default: all-MiniLM-L6-v2)")
    parser.add_argument("--no_fluency", action="store_true", help="skip the fluency NLL")
    parser.add_argument(
        "--reference", type=float, nargs=2, default=[0.0, 0.0], help="hypervolume reference point: quality diversity"
    )
    parser.add_argument("--output", required=True, help="folder for the results (cached per point)")
    _prompt_arguments(parser)
    args = parser.parse_args(argv)

    from trl_diversity.toolkit.sweep import SweepSettings, run_sweep, sweep_markdown

    settings = SweepSettings(
        base=args.base,
        model_a=args.quality_model,
        model_b=args.diversity_model,
        output_dir=args.output,
        prompts=load_prompt_list(args.prompts, args.num_prompts),
        guidance_scales=args.guidance_scales,
        weights=args.weights,
        num_samples=args.num_samples,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        seed=args.seed,
        prompts_per_batch=args.prompts_per_batch,
        null_prompt=args.unconditional_prompt,
        chat=not args.no_chat,
        embedder=args.embedder,
        fluency=not args.no_fluency,
        reference=tuple(args.reference),
    )
    result = run_sweep(settings)
    print(sweep_markdown(result))
    print(f"\nPlot: {Path(args.output) / 'sweep.png'}")
