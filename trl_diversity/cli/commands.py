"""The `generate`, `evaluate`, `merge`, `sweep` and `dial` sub-commands (argument parsing only; the work lives in the
toolkit).

Each command parses and checks all of its arguments (paths, ranges, the output folder) before it imports torch or
loads a model, so a mistake is reported at once, as a one-line `UserError`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from trl_diversity.cli.arguments import CommandParser, check_embedder, check_file, check_model, check_new_output
from trl_diversity.errors import UserError

PROMPT_SPLITS = (
    "eval",
    "train",
    "open",
)  # the bundled prompt sets (trl_diversity.data.SPLITS, without importing datasets)


def _at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def _weight(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1] (0: the first model, 1: the second), got {text}")
    return value


def _prompt_arguments(parser: argparse.ArgumentParser, min_samples: int = 1) -> None:
    parser.add_argument(
        "--prompts",
        default="eval",
        help="'eval' or 'train' (the bundled prompts), or a .jsonl/.json/.txt file of prompts",
    )
    parser.add_argument("--num_prompts", type=_at_least(1), default=None, help="use the first N prompts (None: all)")
    parser.add_argument("--num_samples", type=_at_least(min_samples), default=4, help="samples per prompt (k)")
    parser.add_argument("--max_new_tokens", type=_at_least(1), default=48, help="tokens generated per sample at most")
    parser.add_argument("--temperature", type=_positive_float, default=1.0, help="sampling temperature")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the sampling")
    parser.add_argument("--unconditional_prompt", default="", help="the null condition of CFG's unconditional branch")
    parser.add_argument("--no_chat", action="store_true", help="plain-text prompts instead of the chat template")
    parser.add_argument(
        "--prompts_per_batch", type=_at_least(1), default=4, help="prompts sampled together in one batch"
    )


def _target(text: str):
    from trl_diversity.toolkit.dial import Target

    try:
        return Target.parse(text)
    except UserError as error:  # argparse shows the message of this type only, prefixed with the flag
        raise argparse.ArgumentTypeError(str(error)) from None


def _check_prompts(spec: str) -> None:
    if spec not in PROMPT_SPLITS:
        check_file(spec, "--prompts", "'eval', 'train', 'open' or a .jsonl/.json/.txt file of prompts")


def load_prompt_list(spec: str, limit: int | None) -> list[str]:
    from trl_diversity.data import SPLITS, load_prompts

    if spec in SPLITS:
        prompts = load_prompts(spec)["prompt"]
    else:
        path = Path(spec)
        if not path.is_file():
            raise UserError(f"Prompt file {spec} does not exist; pass 'eval', 'train', 'open' or a file of prompts.")
        if path.suffix in (".jsonl", ".json"):
            from datasets import load_dataset

            prompts = load_dataset("json", data_files=str(path), split="train")["prompt"]
        else:
            prompts = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    return list(prompts[:limit] if limit else prompts)


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not JSON; write it like '{{\"enable_thinking\": false}}'"
        ) from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object like '{{\"enable_thinking\": false}}', got {text}")
    return value


def _probability(text: str) -> float:
    value = _positive_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must lie in (0, 1], got {text}")
    return value


def _sampling_arguments(parser: argparse.ArgumentParser) -> None:
    """The sampling settings beyond the shared prompt options (generate and evaluate only). Sampling never inherits
    the checkpoint's generation_config.json: what is not asked for here is off."""
    parser.add_argument("--top_p", type=_probability, default=1.0, help="nucleus sampling (1: off)")
    parser.add_argument("--top_k", type=_at_least(0), default=0, help="top-k sampling (0: off)")
    parser.add_argument("--repetition_penalty", type=_positive_float, default=1.0, help="1: off")
    parser.add_argument(
        "--chat_template_kwargs",
        type=_json_object,
        default=None,
        help="JSON object passed to the chat template, e.g. '{\"enable_thinking\": false}'",
    )


def _sampling(args):
    from trl_diversity.toolkit.generation import Sampling

    return Sampling(
        num_samples=args.num_samples,
        max_new_tokens=args.max_new_tokens,
        guidance_scale=args.guidance_scale,
        guidance=getattr(args, "guidance", None),
        null_prompt=args.unconditional_prompt,
        chat=not args.no_chat,
        chat_template_kwargs=args.chat_template_kwargs,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        repetition_penalty=args.repetition_penalty,
        seed=args.seed,
        prompts_per_batch=args.prompts_per_batch,
    )


def _label(args, name: str, label: str | None = None) -> str:
    if label:
        return label
    if getattr(args, "guidance", None) is not None:
        return f"{name} + guidance {args.guidance}"
    return name if args.guidance_scale == 1 else f"{name} + CFG {args.guidance_scale:g}"


def _guidance_argument(parser) -> None:
    parser.add_argument(
        "--guidance",
        type=_guidance,
        default=None,
        help="a guided teacher beyond plain CFG, as the trainer's `guidance` field writes it: terms WEIGHT*NEGATIVE "
        "joined by +, NEGATIVE null, a quoted text ({prompt} is the prompt) or layer:N, then optionally 'from M' "
        "(e.g. '2*null from 4'); instead of --guidance_scale",
    )


def _guidance(text: str) -> str:
    from trl_diversity.guidance import parse_guidance

    try:
        parse_guidance(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def _generate(args, name: str, prompts: list[str], label: str | None = None) -> tuple[dict, list[dict]]:
    """The header and records of `name`'s samples, with the prompt, sampling and CFG options of `args`, labelled
    `label` (None: the model's name, and its CFG scale)."""
    from trl_diversity.toolkit.generation import (
        generate_batches,
        generation_header,
        load_generation_model,
        sampling_config,
    )

    model, tokenizer = load_generation_model(name)
    label, sampling = _label(args, name, label), _sampling(args)
    header = generation_header(
        label, prompts, sampling, {"model": name}, generation_config=sampling_config(model, tokenizer, sampling)
    )
    return header, [r for batch in generate_batches(model, tokenizer, prompts, sampling, label) for r in batch]


def generate(argv: list[str]) -> None:
    parser = CommandParser(
        prog="trl-diversity generate",
        description="Sample k completions per prompt into a JSONL file, a batch of prompts at a time: an interrupted "
        "run leaves <output>.partial, and the same command resumes it (from the random generator's state after the "
        "last whole batch, so the result is the same as an uninterrupted run's).",
    )
    parser.add_argument(
        "--model", default="default", help="checkpoint folder, LoRA adapter folder, hub id or 'default'"
    )
    parser.add_argument("--base", default=None, help="base model of a LoRA adapter (None: from its config)")
    parser.add_argument(
        "--guidance_scale", type=_positive_float, default=1.0, help="CFG scale; 1 = no guidance (1 pass / token)"
    )
    _guidance_argument(parser)
    parser.add_argument("--label", default=None, help="model name recorded in the output (None: --model)")
    parser.add_argument("--output", required=True, help="JSONL file to write")
    _prompt_arguments(parser)
    _sampling_arguments(parser)
    args = parser.parse_args(argv)
    check_model(args.model, "--model", base_given=args.base is not None)
    if args.base is not None:
        check_model(args.base, "--base", adapter=False)
    _check_prompts(args.prompts)

    from trl_diversity.toolkit.generation import load_generation_model, write_generations

    prompts = load_prompt_list(args.prompts, args.num_prompts)
    try:
        path = write_generations(
            args.output,
            prompts,
            lambda: load_generation_model(args.model, args.base),
            _sampling(args),
            label=_label(args, args.model, args.label),
            source={"model": args.model, "base": args.base},
        )
    except KeyboardInterrupt:
        sys.exit(130)
    print(f"Wrote {path}")


def evaluate(argv: list[str]) -> None:
    parser = CommandParser(
        prog="trl-diversity evaluate", description="Quality, diversity and cost of generations, per model."
    )
    parser.add_argument(
        "generations",
        nargs="*",
        help="JSONL files written by `trl-diversity generate`; every model must have the same prompts and number "
        "of samples per prompt (see --shared_prompts_only and --truncate_k)",
    )
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        help="also generate from this model first (repeatable; uses the prompt, sampling and CFG options)",
    )
    parser.add_argument(
        "--guidance_scale", type=_positive_float, default=1.0, help="CFG scale for --model generations"
    )
    _guidance_argument(parser)
    parser.add_argument("--save_generations", default=None, help="JSONL file for the --model generations")
    parser.add_argument(
        "--embedder",
        default=None,
        help="sentence-transformers model for adherence and diversity (None: the bundled all-MiniLM-L6-v2); "
        "use another than the training embedder to check for reward hacking",
    )
    parser.add_argument(
        "--fluency_model", default="default", help="unguided base model for the fluency NLL ('none' to skip)"
    )
    parser.add_argument(
        "--no_fluency", action="store_true", help="skip the fluency NLL (as in sweep and dial; = --fluency_model none)"
    )
    parser.add_argument(
        "--reward",
        default=None,
        help="reward model folder/hub id, or module:function called like a GRPO reward function",
    )
    parser.add_argument("--output", required=True, help="JSON file to write (a .md table is written beside it)")
    parser.add_argument(
        "--shared_prompts_only",
        action="store_true",
        help="compare on the prompts every model was sampled on (without it, different prompts are an error)",
    )
    parser.add_argument(
        "--truncate_k",
        action="store_true",
        help="use the first k samples of each prompt, k the fewest any model has (without it, different numbers "
        "of samples per prompt are an error)",
    )
    _prompt_arguments(parser, min_samples=2)
    _sampling_arguments(parser)
    args = parser.parse_args(argv)
    if not args.generations and not args.model:
        parser.error("give generation files, or --model to generate from")
    for path in args.generations:
        check_file(path, "generations file", "JSONL files written by `trl-diversity generate`")
    names = source_names(args.generations)
    for name in args.model:
        check_model(name, "--model")
        if args.model.count(name) > 1:
            raise UserError(f"--model {name} is given twice; pass each model once.")
    if args.model:
        _check_prompts(args.prompts)
    check_embedder(args.embedder, "--embedder")
    if args.no_fluency:
        if args.fluency_model.lower() not in ("default", "none"):
            parser.error(
                f"--no_fluency skips the fluency NLL that --fluency_model {args.fluency_model} is for: drop one"
            )
        args.fluency_model = "none"
    if args.fluency_model.lower() != "none":
        check_model(args.fluency_model, "--fluency_model")
    if args.reward:
        _check_reward(args.reward)

    from trl_diversity.atomic import write_text_atomic
    from trl_diversity.toolkit.evaluation import align_records, load_reward, markdown_table, row_labels, summarize
    from trl_diversity.toolkit.generation import load_generation_model, read_generations

    files = [(name, *read_generations(path)) for name, path in zip(names, args.generations)]
    # A model label that several files hold (seeds, temperatures of one model) is a row per file, never one row.
    generated = {name: _label(args, name) for name in args.model}
    sources = {name: [line["model"] for line in [*lines, *samples]] for name, lines, samples in files}
    rows = row_labels({**sources, "generated": list(generated.values())})
    headers, records = {}, []
    for name, file_headers, file_records in files:
        headers.update((rows[name, header["model"]], header) for header in file_headers)
        records += [{**record, "model": rows[name, record["model"]]} for record in file_records]
    align = {"shared_prompts_only": args.shared_prompts_only, "truncate_k": args.truncate_k}
    if not args.model:
        align_records(records, **align)  # refuse files that cannot be compared before any model loads
    if args.model:
        from trl_diversity.toolkit.generation import write_jsonl

        prompts = load_prompt_list(args.prompts, args.num_prompts)
        lines = []
        for name in args.model:
            header, samples = _generate(args, name, prompts, rows["generated", generated[name]])
            headers[header["model"]] = header
            records += samples
            lines += [header, *samples]
        if args.save_generations:
            write_jsonl(lines, args.save_generations)
        align_records(records, **align)

    from trl_diversity.rewards.embedder import load_embedder

    embedder = load_embedder(args.embedder, device="cpu")
    reward = load_reward(args.reward) if args.reward else None
    fluency = None if args.fluency_model.lower() == "none" else load_generation_model(args.fluency_model)
    summary = summarize(
        records,
        embedder,
        fluency=fluency,
        reward=reward,
        chat=not args.no_chat,
        chat_template_kwargs=args.chat_template_kwargs,
        headers=headers,
        **align,
    )
    output = Path(args.output)
    write_text_atomic(output, json.dumps(summary, indent=2))
    table = markdown_table(summary)
    write_text_atomic(output.with_suffix(".md"), table + "\n")
    print(table)


def source_names(paths: list[str]) -> list[str]:
    """How each generations file is named in a row label (`default (seed1.jsonl)`, see `evaluation.row_labels`): its
    file name, or the path as given where two files share a name. A file given twice is refused: its samples would
    be pooled with themselves (a self-BLEU of 100)."""
    seen: dict[Path, str] = {}
    for path in paths:
        resolved = Path(path).resolve()
        if resolved in seen:
            again = "" if seen[resolved] == path else f" (as {seen[resolved]} before)"
            raise UserError(f"generations file {path} is given twice{again}; pass each file once.")
        seen[resolved] = path
    names = [Path(path).name for path in paths]
    return [name if names.count(name) == 1 else path for name, path in zip(names, paths)]


def _check_reward(spec: str) -> None:
    if ":" in spec and not spec.startswith(("/", ".")):
        from trl_diversity.importing import import_callable

        # Imported now, from the working directory too, so that a mistake is one line before any model loads.
        import_callable(spec, "--reward", "reward function")
        return
    check_model(spec, "--reward", adapter=False)


def merge(argv: list[str]) -> None:
    parser = CommandParser(
        prog="trl-diversity merge",
        description="Write (1 - w) * A + w * B for two checkpoints or two LoRA adapters. Two LoRA adapters of one base "
        "give one LoRA adapter of rank r_A + r_B that is exactly the interpolation (serve each dial point as an "
        "adapter on one base); --merged writes a full checkpoint instead.",
    )
    parser.add_argument("model_a", help="weight 0: e.g. the quality-focused finetune")
    parser.add_argument("model_b", help="weight 1: e.g. the diversity-focused finetune")
    parser.add_argument("--weight", type=_weight, required=True, help="w in [0, 1]")
    parser.add_argument("--output", required=True, help="folder to write")
    parser.add_argument("--base", default=None, help="LoRA: the base model (None: from the adapters' configs)")
    parser.add_argument(
        "--merged",
        action="store_true",
        help="LoRA: write a full checkpoint instead of an adapter (needed for adapters that are not plain LoRA: "
        "DoRA, modules_to_save, trained biases)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    args = parser.parse_args(argv)
    check_model(args.model_a, "model_a", base_given=args.base is not None)
    check_model(args.model_b, "model_b", base_given=args.base is not None)
    if args.base is not None:
        check_model(args.base, "--base", adapter=False)
    if not args.overwrite:
        check_new_output(args.output, "--output", "--overwrite")

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


def _pair_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that sweep and dial share; equal values give equal cache keys, so each reuses the other's points."""
    parser.add_argument(
        "--base", default="default", help="the base model (CFG sweep, fluency NLL; LoRA adapters are merged onto it)"
    )
    parser.add_argument("--quality_model", required=True, help="the quality-focused finetune (weight 0)")
    parser.add_argument("--diversity_model", required=True, help="the diversity-focused finetune (weight 1)")
    parser.add_argument("--embedder", default=None, help="evaluation embedder (None: the bundled all-MiniLM-L6-v2)")
    parser.add_argument("--no_fluency", action="store_true", help="skip the fluency NLL")
    _prompt_arguments(parser, min_samples=2)


def _check_pair(args) -> None:
    check_model(args.base, "--base", adapter=False)
    check_model(args.quality_model, "--quality_model", base_given=True)
    check_model(args.diversity_model, "--diversity_model", base_given=True)
    check_embedder(args.embedder, "--embedder")
    _check_prompts(args.prompts)


def _sweep_settings(args, output_dir: str, **extra):
    from trl_diversity.toolkit.sweep import SweepSettings

    return SweepSettings(
        base=args.base,
        model_a=args.quality_model,
        model_b=args.diversity_model,
        output_dir=output_dir,
        prompts=load_prompt_list(args.prompts, args.num_prompts),
        num_samples=args.num_samples,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        seed=args.seed,
        prompts_per_batch=args.prompts_per_batch,
        null_prompt=args.unconditional_prompt,
        chat=not args.no_chat,
        embedder=args.embedder,
        fluency=not args.no_fluency,
        **extra,
    )


def sweep(argv: list[str]) -> None:
    parser = CommandParser(
        prog="trl-diversity sweep",
        description="CFG sweep of the base model against a merge sweep of two finetunes. Writes sweep.md, "
        "sweep.json and sweep.png to --output, caches every point under its points/ (a re-run computes only new "
        "points) and keeps each weight's merged model under its models/lerp-<w>-<pair>/.",
    )
    _pair_arguments(parser)
    parser.add_argument(
        "--guidance_scales", type=_positive_float, nargs="+", default=[1.0, 1.5, 2.0, 3.0], help="CFG points"
    )
    parser.add_argument(
        "--weights", type=_weight, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0], help="merge points, in [0, 1]"
    )
    parser.add_argument(
        "--reference", type=float, nargs=2, default=[0.0, 0.0], help="hypervolume reference point: quality diversity"
    )
    parser.add_argument("--output", required=True, help="folder for the results (cached per point)")
    args = parser.parse_args(argv)
    _check_pair(args)

    from trl_diversity.toolkit.sweep import run_sweep, sweep_markdown

    settings = _sweep_settings(
        args,
        args.output,
        guidance_scales=args.guidance_scales,
        weights=args.weights,
        reference=tuple(args.reference),
    )
    result = run_sweep(settings)
    print(sweep_markdown(result))
    print(f"\nPlot: {Path(args.output) / 'sweep.png'}")


def dial(argv: list[str]) -> None:
    parser = CommandParser(
        prog="trl-diversity dial",
        description="Find the merge weight w whose model (1 - w) * quality_model + w * diversity_model reaches a "
        "target on the evaluation prompts, by bisection on w, and write that merged model (like `merge`) with "
        "dial.json inside: the weight, the measured point and its 95% CI. Points are cached like a sweep's: pass "
        "a sweep's --output as --cache, with the same options, to reuse its points.",
    )
    parser.add_argument(
        "--target",
        type=_target,
        required=True,
        help="metric=value: adherence=0.55, diversity=0.5 (pairwise diversity), or vendi, distinct_1, distinct_2, "
        "self_bleu, fluency_nll",
    )
    _pair_arguments(parser)
    parser.add_argument("--tolerance", type=_positive_float, default=0.01, help="stop within this of the target")
    parser.add_argument(
        "--max_evaluations", type=_at_least(2), default=8, help="points evaluated at most, the two ends included"
    )
    parser.add_argument("--output", required=True, help="folder to write the merged model (and dial.json) to")
    parser.add_argument(
        "--cache", default=None, help="folder whose points/ cache is read and extended (None: <output>-cache)"
    )
    parser.add_argument("--merged", action="store_true", help="LoRA: write a full checkpoint instead of an adapter")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    args = parser.parse_args(argv)
    _check_pair(args)
    if not args.overwrite:
        check_new_output(args.output, "--output", "--overwrite")
    if args.target.metric == "fluency_nll" and args.no_fluency:
        parser.error("a fluency_nll target needs the fluency model: drop --no_fluency")

    from trl_diversity.toolkit.dial import dial as run_dial
    from trl_diversity.toolkit.dial import dial_summary

    cache = args.cache or f"{str(args.output).rstrip('/')}-cache"
    result = run_dial(
        _sweep_settings(args, cache),
        args.target,
        args.output,
        tolerance=args.tolerance,
        max_evaluations=args.max_evaluations,
        merged=args.merged,
        overwrite=args.overwrite,
        report=lambda line: print(line, flush=True),
    )
    print(dial_summary(result, args.output))
