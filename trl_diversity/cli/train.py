"""`trl-diversity train`: run a YAML recipe (plus flag overrides), or, with no arguments, the default job.

Parsed the way TRL's own scripts parse theirs: `TrlParser` over the script arguments below, `DiversityCFGConfig`
and TRL's `ModelConfig` (whose LoRA flags become a `peft_config`). A recipe's keys set the defaults and command-line
flags override them.

The arguments are checked before anything is loaded: paths and the output folder even before torch is imported
(`early_check`), then flag names, recipe keys and the config's own checks (`parse`), then the dataset. A mistake is a
`UserError` that names the problem and the fix.

The default job finetunes SmolLM2-135M-Instruct (the embedded offline default) with LoRA on the bundled prompts for
a CPU-sized budget, then prints a before/after table.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import sys
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path

from trl_diversity.atomic import grant_umask_permissions, write_text_atomic
from trl_diversity.cli.arguments import (
    CommandParser,
    check_embedder,
    check_model,
    find_unknown_flags,
    hub_offline,
    looks_like_path,
    siblings,
    unknown_arguments_message,
    with_help_hint,
)
from trl_diversity.defaults import (
    DEFAULT_JOB_LORA,
    DEFAULT_JOB_TRAINING,
    resolve_model,
)
from trl_diversity.errors import UserError, closest, did_you_mean
from trl_diversity.importing import IMPORT_PATH, import_callable
from trl_diversity.trainer.shutdown import end_distributed_run
from trl_diversity.vllm_cpu import check_vllm_installed

if typing.TYPE_CHECKING:
    from trl_diversity.trainer.diversity_cfg_config import DiversityCFGConfig

# The default job: what `trl-diversity train` runs with no recipe. About 7 minutes on 2 CPU cores.
DEFAULT_JOB = {
    "model_name_or_path": "default",
    "use_peft": True,
    "lora_r": DEFAULT_JOB_LORA["r"],
    "lora_alpha": DEFAULT_JOB_LORA["lora_alpha"],
    "lora_target_modules": DEFAULT_JOB_LORA["target_modules"],
    **DEFAULT_JOB_TRAINING,
}
USAGE = "trl-diversity train [recipe.yaml] [--flag value ...]"
DESCRIPTION = (
    "Finetune with diversity-rewarded CFG distillation, on TRL's GRPO (the default) or RLOO (`--algorithm rloo`). A "
    "recipe's keys set the defaults and flags override them; with no recipe, the defaults below are the default "
    "job's. The method's options come first, then the data, the model and LoRA (TRL's ModelConfig), then the "
    "algorithm's and transformers' training options (`--algorithm rloo --help` lists RLOO's)."
)


@dataclass(frozen=True)
class Algorithm:
    """The TRL algorithm an `--algorithm` trains with. Classes are named, not imported: importing them loads torch,
    which `--help` and the early checks do without."""

    config: str  # our config class, in trl_diversity.trainer.diversity_cfg_config
    trainer: str  # our trainer class, in trl_diversity.trainer.diversity_cfg_trainer
    trl_name: str  # TRL's name for the algorithm, as in its messages
    trl_config: str  # TRL's config class that ours extends


ALGORITHMS = {
    "grpo": Algorithm("DiversityCFGConfig", "DiversityCFGTrainer", "GRPO", "GRPOConfig"),
    "rloo": Algorithm("DiversityCFGRLOOConfig", "DiversityCFGRLOOTrainer", "RLOO", "RLOOConfig"),
}
RECIPE_SUFFIXES = (".yaml", ".yml")


@dataclass
class TrainScriptArguments:
    """What to train on and how to report; the model and training fields live in ModelConfig and the config."""

    algorithm: str = field(
        default="grpo",
        metadata={
            "help": "TRL's online RL algorithm under the method: 'grpo' (GRPOTrainer: group-normalised advantages, "
            "KL as a loss term, beta=0 by default) or 'rloo' (RLOOTrainer: leave-one-out baselines, KL as a reward "
            "penalty, beta=0.05 by default). Options of the other algorithm are refused.",
            "choices": list(ALGORITHMS),
        },
    )

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
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Train into an output_dir that holds files already. Its old checkpoint-* folders and before/after "
            "table are deleted first, so that `--resume_from_checkpoint true` cannot pick up the old run. Without "
            "this flag (or --resume_from_checkpoint), train refuses a non-empty output_dir."
        },
    )


def config_class(algorithm: str):
    from trl_diversity.trainer import diversity_cfg_config

    return getattr(diversity_cfg_config, ALGORITHMS[algorithm].config)


def _parser(algorithm: str = "grpo"):
    """The train parser, built on first use: `TrlParser` and the config behind it import torch and transformers."""
    from trl import ModelConfig, TrlParser

    from trl_diversity.trainer.diversity_cfg_config import method_field_names

    config = config_class(algorithm)
    trl_name, trl_config = ALGORITHMS[algorithm].trl_name, ALGORITHMS[algorithm].trl_config

    class Parser(TrlParser):
        """TrlParser whose errors are one-line `UserError`s and whose help groups the options by origin, the
        method's first (argparse prints groups in the order they were created)."""

        def error(self, message: str):
            if "argument --debug" in message:  # TrainingArguments' option, not the command line's traceback switch
                message += (
                    "; for a traceback of an error, put --debug before the command: `trl-diversity --debug train`"
                )
            raise UserError(with_help_hint(message, "trl-diversity train"))

        def _add_dataclass_arguments(self, dtype):
            if not hasattr(self, "_groups"):
                self._groups = {
                    "method": self.add_argument_group("diversity-rewarded CFG distillation (the method's own fields)"),
                    TrainScriptArguments: self.add_argument_group("algorithm, data and the before/after report"),
                    ModelConfig: self.add_argument_group("model and LoRA (TRL's ModelConfig)"),
                    config: self.add_argument_group(
                        f"{trl_name} and training ({trl_config} and transformers' TrainingArguments; {trl_name}'s "
                        "defaults unless the default job or a recipe sets them)"
                    ),
                }
            own_fields = set(method_field_names())  # the method's fields (DiversityCFGFields), not TRL's
            hints = typing.get_type_hints(dtype)  # resolves `from __future__ import annotations` strings
            for item in dataclasses.fields(dtype):
                if not item.init:
                    continue
                item.type = hints[item.name]
                group = self._groups["method" if dtype is config and item.name in own_fields else dtype]
                self._parse_dataclass_field(group, item)

    return Parser(
        (TrainScriptArguments, config, ModelConfig),
        allow_abbrev=False,  # see find_unknown_flags
        prog="trl-diversity train",
        usage=USAGE,
        description=DESCRIPTION,
    )


def split_recipe(argv: list[str]) -> tuple[str | None, list[str]]:
    """(recipe path or None, the remaining flags): `train recipe.yaml --flag v` or `train --config recipe.yaml`."""
    if argv and not argv[0].startswith("-"):
        return argv[0], argv[1:]
    if "--config" in argv:
        index = argv.index("--config")
        if index + 1 >= len(argv):
            raise UserError("--config needs a recipe file (or give the recipe first: `trl-diversity train r.yaml`).")
        return argv[index + 1], argv[:index] + argv[index + 2 :]
    return None, list(argv)


def read_recipe(path: str) -> dict:
    import yaml

    recipe = Path(path)
    if not recipe.is_file():
        siblings = (
            [p.name for p in recipe.parent.glob("*") if p.suffix in RECIPE_SUFFIXES] if recipe.parent.is_dir() else []
        )
        raise UserError(
            f"recipe {path} does not exist{did_you_mean(recipe.name, siblings, prefix=f'{recipe.parent}/')}"
        )
    try:
        values = yaml.safe_load(recipe.read_text())
    except yaml.YAMLError as error:
        raise UserError(f"recipe {path} is not valid YAML: {error}") from error
    if not isinstance(values, dict):
        raise UserError(f"recipe {path} must be a YAML mapping of field names to values (e.g. `max_steps: 50`).")
    return values


def parse(argv: list[str]):
    """(script arguments, DiversityCFGConfig, ModelConfig) from a recipe and flags; a mistake is a `UserError`."""
    import torch

    recipe, flags = split_recipe(list(argv))
    recipe_keys = list(read_recipe(recipe)) if recipe is not None else []
    algorithm = chosen_algorithm(flags, read_recipe(recipe) if recipe is not None else {})
    check_algorithm_options(algorithm, flags, recipe_keys, recipe)
    parser = _parser(algorithm)
    if recipe is None:
        parser.set_defaults_with_config(**DEFAULT_JOB)
    else:
        fields = {action.dest for action in parser._actions} - {"help"}
        for key in recipe_keys:
            if key not in fields and key != "env":
                raise UserError(f"recipe {recipe}: unknown key `{key}`{did_you_mean(key, fields)}")
    if not torch.cuda.is_available():
        # float32 on a CPU: GRPO's default bf16 would need a GPU (or, with use_cpu, run several times slower).
        use_cpu_given = bool({"--use_cpu", "--use-cpu"} & {flag.split("=", 1)[0] for flag in flags})
        parser.set_defaults_with_config(bf16=False, **({} if use_cpu_given else {"use_cpu": True}))
    # Unknown flags first: a typo means the value the user meant was not applied, which may explain other errors.
    unknown = find_unknown_flags(flags, parser._option_string_actions) or parser.parse_known_args(flags)[1]
    if unknown:
        parser.error(unknown_arguments_message(unknown, parser._option_string_actions))
    try:
        script_args, training_args, model_args = parser.parse_args_and_config(
            [*(["--config", recipe] if recipe else []), *flags]
        )
    except UserError:
        raise
    except ValueError as error:  # the config's checks (ours, GRPO's, TrainingArguments'): all about the arguments
        raise UserError(str(error)) from error
    check_precision(training_args, gpu=torch.cuda.is_available())
    return script_args, training_args, model_args


def chosen_algorithm(flags: list[str], recipe: dict) -> str:
    """`--algorithm` from the flags, else the recipe's `algorithm` key, else GRPO."""
    algorithm = recipe.get("algorithm", "grpo")
    for index, flag in enumerate(flags):
        if flag == "--algorithm" and index + 1 < len(flags):
            algorithm = flags[index + 1]
        elif flag.startswith("--algorithm="):
            algorithm = flag.split("=", 1)[1]
    if algorithm not in ALGORITHMS:
        raise UserError(
            f"argument --algorithm: invalid choice {algorithm!r} (choose from {', '.join(ALGORITHMS)})"
            f"{did_you_mean(str(algorithm), list(ALGORITHMS))}"
        )
    return algorithm


def algorithm_only_fields() -> dict[str, set[str]]:
    """Per algorithm, the config fields the other algorithm's config lacks (from TRL's own dataclasses)."""
    configs = {name: {f.name for f in dataclasses.fields(config_class(name))} for name in ALGORITHMS}
    return {
        name: fields - set.union(*(other for key, other in configs.items() if key != name))
        for name, fields in configs.items()
    }


def check_algorithm_options(algorithm: str, flags: list[str], recipe_keys: list[str], recipe: str | None) -> None:
    """An option of the other algorithm (`--loss_type` under RLOO, `--normalize_advantages` under GRPO) is refused in
    one line, rather than reported as an unknown flag."""
    given = [
        (flag.split("=", 1)[0][2:].replace("-", "_"), flag.split("=", 1)[0]) for flag in flags if flag.startswith("--")
    ]
    given += [(key, f"recipe {recipe}: key `{key}`") for key in recipe_keys]
    for other, fields in algorithm_only_fields().items():
        if other == algorithm:
            continue
        for name, shown in given:
            if name in fields:
                trl_name = ALGORITHMS[other].trl_name
                article = "an" if trl_name == "RLOO" else "a"  # "an R...", "a G..."
                raise UserError(
                    f"{shown} is {article} {trl_name} option, and --algorithm {algorithm} trains with "
                    f"{ALGORITHMS[algorithm].trl_name}: drop it, or train with --algorithm {other}."
                )


def check_precision(training_args, gpu: bool) -> None:
    """Refuse bf16 on a CPU: torch accepts it there, but a step takes several times as long as in float32 (one step
    of the default job was reported at 147 s, against about 18 s in float32 on 2 cores), with no word of why."""
    if not (training_args.bf16 and training_args.use_cpu):
        return
    where = "this machine has no GPU" if not gpu else "--use_cpu puts training on the CPU"
    raise UserError(
        f"--bf16 true: {where}, and bf16 on a CPU trains several times slower than float32. Drop --bf16 (or pass "
        "--bf16 false, which also overrides a recipe's `bf16: true`) to train in float32."
    )


# ---------------------------------------------------------------------------------------------------------------------
# Checks that need no model


# Fields whose values `early_check` reads from the recipe and flags before the full parser exists.
_EARLY_FIELDS = (
    "model_name_or_path",
    "teacher_model",
    "diversity_embedder",
    "dataset_name",
    "output_dir",
    "resume_from_checkpoint",
    "overwrite_output_dir",
    "diversity_reward",
)


def early_check(argv: list[str]) -> None:
    """Check the paths and the output folder before torch is imported: a mistake there is reported at once.

    A cheap reading of the few path fields from the default job or recipe and the flags; `parse` reads them
    properly afterwards and `check_arguments` checks them again, so a reading missed here is still caught.
    """
    recipe, flags = split_recipe(list(argv))
    values = dict(DEFAULT_JOB) if recipe is None else read_recipe(recipe)
    reader = CommandParser(add_help=False)
    for name in _EARLY_FIELDS:
        flag = {"nargs": "?", "const": "true"} if name == "overwrite_output_dir" else {}
        reader.add_argument(f"--{name}", f"--{name.replace('_', '-')}", dest=name, **flag)
    try:
        given, _ = reader.parse_known_args(flags)
    except UserError:  # e.g. a path flag with no value: `parse` reports it, with the full parser's help
        return
    values.update({k: v for k, v in vars(given).items() if v is not None})
    overwrite = str(values.get("overwrite_output_dir", False)).lower() in ("true", "1", "yes")
    check_values({**values, "overwrite_output_dir": overwrite})


def check_values(values: dict) -> None:
    """The checks shared by `early_check` and `check_arguments`, on a dict of field values."""
    check_model(values.get("model_name_or_path", "default"), "--model_name_or_path", adapter=False)
    if values.get("teacher_model") is not None:  # None: the initial policy is the teacher
        check_model(values["teacher_model"], "--teacher_model", adapter=False)
    check_embedder(values.get("diversity_embedder"), "--diversity_embedder")
    reward = values.get("diversity_reward")
    if isinstance(reward, str) and IMPORT_PATH.match(reward):  # built-in names are checked with the config
        import_callable(reward, "--diversity_reward", "group reward")
    dataset = values.get("dataset_name")
    if dataset is not None and not Path(dataset).exists():
        if looks_like_path(dataset) or Path(dataset).suffix in (".json", ".jsonl", ".csv", ".parquet"):
            hint = closest(Path(dataset).name, siblings(Path(dataset)))
            suggestion = f"did you mean {Path(dataset).parent / hint}? Else pass" if hint else "pass"
            raise UserError(
                f"--dataset_name {dataset} does not exist; {suggestion} a .json/.jsonl/.csv/.parquet file or a folder "
                "with a `prompt` column, a hub dataset id, or leave it unset for the bundled prompts."
            )
        if hub_offline() and not dataset_is_cached(dataset):
            raise UserError(
                f"--dataset_name {dataset} is not a local file or folder, and the hub is offline (HF_HUB_OFFLINE) with "
                f"no cached copy of it; {DATASET_KINDS}, or unset HF_HUB_OFFLINE to download it."
            )
    check_output_dir(
        values.get("output_dir") or "trainer_output",
        values.get("resume_from_checkpoint"),
        bool(values.get("overwrite_output_dir")),
    )


DATASET_KINDS = (
    "pass a .json/.jsonl/.csv/.parquet file or a folder with a `prompt` column (or leave it unset for the bundled "
    "prompts)"
)


def dataset_is_cached(name: str) -> bool:
    """Whether a hub dataset id has a local copy that `load_dataset` can use offline: a snapshot in the hub cache, or
    a prepared copy in the datasets cache (the paths `datasets.config` uses, without its one-second import)."""
    from huggingface_hub import constants

    datasets_cache = Path(os.environ.get("HF_DATASETS_CACHE") or Path(constants.HF_HOME) / "datasets")
    return (Path(constants.HF_HUB_CACHE) / f"datasets--{name.replace('/', '--')}").is_dir() or (
        datasets_cache / name.replace("/", "___")
    ).is_dir()


def check_hub_dataset(name: str) -> None:
    """A hub dataset id with no local copy: ask the hub once, quickly, whether it has it, so that a wrong name or an
    unreachable hub is one line at once rather than `load_dataset`'s traceback after five retries (28 s)."""
    if Path(name).exists() or dataset_is_cached(name) or hub_offline():
        return
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        HfApi().dataset_info(name, timeout=10)
    except GatedRepoError:
        return  # it exists: `load_dataset` says what access it needs
    except RepositoryNotFoundError:
        raise UserError(
            f"--dataset_name {name} is not a local file or folder, and the hub has no dataset of that name (or it is "
            f"private: log in with `hf auth login`); {DATASET_KINDS}."
        ) from None
    except Exception as error:  # the hub is unreachable: no network, a proxy, a timeout
        raise UserError(
            f"--dataset_name {name} is not a local file or folder, nor a cached dataset, and the hub cannot be reached "
            f"({type(error).__name__}: {error}); {DATASET_KINDS}, or retry where the hub is reachable."
        ) from None


def check_output_dir(output_dir: str, resume: str | None, overwrite: bool) -> None:
    """Refuse a folder that holds an earlier run, unless the user asked to resume it or to overwrite it."""
    if not _first_process():
        # Under `accelerate launch`, the first process alone decides: another one checking later could find the
        # files the first already wrote. If the first refuses, the launcher stops the others.
        return
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"--output_dir {output_dir} is a file; pass a folder (it is created if missing).")
    resume = _resume_argument(resume)
    if resume is True:
        if not any(out.glob("checkpoint-*")):
            raise UserError(
                f"--resume_from_checkpoint true: {output_dir} holds no checkpoint-* folder to resume from. Drop the "
                "flag to start a fresh run, or point --output_dir at the run to resume."
            )
        return
    if resume is not None:
        if not Path(resume).is_dir():
            raise UserError(f"--resume_from_checkpoint {resume} is not a checkpoint folder (or pass `true`).")
        return
    contents = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if contents and not overwrite:
        shown = ", ".join(contents[:4]) + (", ..." if len(contents) > 4 else "")
        finished = any((out / name).is_file() for name in FINAL_MODEL_FILES)
        continue_it = (
            "it holds a finished run: to train it further, resume it with --resume_from_checkpoint true and a larger "
            "--max_steps"
            if finished
            else "continue that run with --resume_from_checkpoint true"
        )
        raise UserError(
            f"--output_dir {output_dir} already holds files ({shown}). Choose another --output_dir, {continue_it}, "
            "or pass --overwrite_output_dir to replace it."
        )


# What `save_model` writes at the end of a run (an adapter, or a full checkpoint), beside the checkpoint-* folders.
FINAL_MODEL_FILES = ("adapter_model.safetensors", "model.safetensors", "model.safetensors.index.json")


def check_arguments(script_args, training_args, model_args) -> None:
    """Everything that can be checked once the arguments are parsed, before any model or embedder loads."""
    check_values(
        {
            "model_name_or_path": model_args.model_name_or_path,
            "teacher_model": training_args.teacher_model,
            "diversity_embedder": training_args.diversity_embedder,
            "diversity_reward": training_args.diversity_reward,
            "dataset_name": script_args.dataset_name,
            "output_dir": training_args.output_dir,
            "resume_from_checkpoint": training_args.resume_from_checkpoint,
            "overwrite_output_dir": script_args.overwrite_output_dir,
        }
    )
    check_vllm_installed(training_args)  # before the base model is measured for the before/after table
    if training_args.distill_coef == 0 and training_args.diversity_coef == 0:
        raise UserError(
            "Nothing to train on: --distill_coef 0 and --diversity_coef 0. Set --distill_coef > 0 (CFG "
            "distillation) or --diversity_coef > 0 (diversity reward); extra reward functions need the Python API."
        )


def clear_previous_run(output_dir: str) -> list[str]:
    """With --overwrite_output_dir: delete the old run's checkpoints and table, so that nothing of it can be mistaken
    for the new run's (the new run's files replace the rest). Returns what was deleted."""
    out = Path(output_dir)
    stale = [*out.glob("checkpoint-*"), *out.glob("before_after.*")]
    if _first_process():  # one process deletes; the others start training after it
        for path in stale:
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    return sorted(p.name for p in stale)


def load_train_dataset(script_args: TrainScriptArguments):
    from datasets import load_dataset

    from trl_diversity.data import load_prompts

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
        raise UserError(
            f"The training dataset has no `prompt` column (columns: {dataset.column_names}). Rename the column that "
            "holds the prompts to `prompt`."
        )
    return dataset


def build_trainer(script_args: TrainScriptArguments, training_args: DiversityCFGConfig, model_args):
    """The trainer a parsed `train` command runs: model (or `default`), tokenizer, dataset and LoRA resolved."""
    from transformers import AutoTokenizer
    from trl import get_peft_config

    from trl_diversity.trainer import diversity_cfg_trainer

    trainer_class = getattr(diversity_cfg_trainer, ALGORITHMS[script_args.algorithm].trainer)
    model_path = resolve_model(model_args.model_name_or_path)
    training_args.model_init_kwargs = {
        **(training_args.model_init_kwargs or {}),
        **({"dtype": model_args.dtype} if model_args.dtype else {}),
        **({"attn_implementation": model_args.attn_implementation} if model_args.attn_implementation else {}),
        **({"revision": model_args.model_revision} if model_args.model_revision != "main" else {}),
    }
    tokenizer = AutoTokenizer.from_pretrained(model_path, padding_side="left")
    trainer = trainer_class(
        model=model_path,
        args=training_args,
        train_dataset=load_train_dataset(script_args),
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
    )
    return trainer  # an adapter of the default model is saved naming its base `default` (the trainer's `_save`)


def load_checked_dataset(script_args: TrainScriptArguments):
    """The training prompts, checked (a `prompt` column, no empty prompt) before any model loads."""
    from trl_diversity.trainer.validation import check_prompt_dataset

    if script_args.dataset_name is not None:
        check_hub_dataset(script_args.dataset_name)
    try:
        dataset = load_train_dataset(script_args)
        check_prompt_dataset(dataset, f"--dataset_name {script_args.dataset_name}")
    except (FileNotFoundError, ConnectionError) as error:  # datasets' "not found" and "couldn't reach" errors
        raise UserError(f"--dataset_name {script_args.dataset_name}: {error}") from error
    except ValueError as error:
        raise UserError(str(error)) from error
    return dataset


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not {"-h", "--help"} & set(argv):
        early_check(argv)
    script_args, training_args, model_args = parse(argv)
    check_arguments(script_args, training_args, model_args)
    if script_args.overwrite_output_dir and _resume_argument(training_args.resume_from_checkpoint) is None:
        deleted = clear_previous_run(training_args.output_dir)
        if deleted:
            print(f"--overwrite_output_dir: deleted {', '.join(deleted)} from {training_args.output_dir}")
    load_checked_dataset(script_args)  # a bad dataset fails before the base model is measured

    report = measure_base_for_report(script_args, training_args, model_args)
    trainer = build_trainer(script_args, training_args, model_args)
    if trainer.accelerator.is_main_process:
        print_quality_reward_note(trainer)
    interrupted = _train_and_save(trainer, training_args, model_args)
    sharded = _sharded(trainer)
    # Every rank, after its last collective; not in a `finally`: after an error on one rank, its barrier would wait
    # for ranks that are elsewhere.
    end_distributed_run(trainer.accelerator)
    if interrupted is not None:
        # The shell's convention for a process ended by a signal (130: SIGINT, 143: SIGTERM), so that a script or a
        # scheduler tells an interrupted run from a finished one; the checkpoint is saved already.
        sys.exit(interrupted)
    if report is None or not trainer.accelerator.is_main_process:
        return
    if sharded:
        print(
            "Skipped the before/after report: the finetuned model is sharded across processes. Measure the saved "
            f"model with `trl-diversity generate --model {training_args.output_dir}` and `trl-diversity evaluate`."
        )
        return
    report.measure_finetuned(trainer.accelerator.unwrap_model(trainer.model))
    table = report.markdown()
    print(table)
    out = Path(training_args.output_dir)
    write_text_atomic(out / "before_after.md", table + "\n")
    write_text_atomic(out / "before_after.json", json.dumps(report.rows, indent=2) + "\n")


def measure_base_for_report(script_args: TrainScriptArguments, training_args, model_args):
    """The before/after table with its base rows measured (sampled before training, with a line saying why), on the
    first process only: under `accelerate launch` the others would sample the same rows again. None with
    `--report_prompts 0`, and on the other processes."""
    if script_args.report_prompts <= 0 or not _first_process():
        return None
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
    print(
        f"Before training: sampling the base model, without and with CFG {training_args.guidance_scale:g}, on "
        f"{len(report.prompts)} evaluation prompts for the before/after table printed at the end "
        "(--report_prompts 0 skips it).",
        flush=True,
    )
    report.measure_base(model_path)
    return report


def print_quality_reward_note(trainer) -> None:
    """Say once, at train start, why GRPO's `reward` columns stay constant when there is no quality reward (the
    command line takes none), and where the method's own signal is logged."""
    if trainer.reward_funcs:
        return
    logged = [
        *(["`distill/divergence`"] if trainer.args.distill_coef > 0 else []),
        "`diversity/reward/mean`",
        "`diversity/advantage_abs`",
    ]
    print(
        "No quality reward: the logs' `reward` and `reward_std` stay 0 and `frac_reward_zero_std` 1 (TRL's columns "
        f"for quality rewards). The method's signal is logged as {', '.join(logged)} (docs/guide/method.md).",
        flush=True,
    )


def _train_and_save(trainer, training_args, model_args) -> int | None:
    """Train and save the model. None when training finished; when a signal interrupted it (a checkpoint was saved
    instead of the model), the exit status to end with: 128 + the signal's number."""
    started = time.time()
    trainer.train(resume_from_checkpoint=_resume_argument(training_args.resume_from_checkpoint))
    if trainer.interrupted:
        status = 128 + _signal_received(trainer)
        if trainer.accelerator.is_main_process:
            _share_like_other_files(training_args.output_dir, started)
            print(
                f"Interrupted at step {trainer.state.global_step}; a checkpoint was saved in "
                f"{training_args.output_dir}. Resume with the same command plus --resume_from_checkpoint true. "
                f"Exiting with exit status {status}.",
                flush=True,
            )
        return status
    trainer.save_model(training_args.output_dir)
    if trainer.accelerator.is_main_process:
        _share_like_other_files(training_args.output_dir, started)
        print(f"Saved the finetuned {'adapter' if model_args.use_peft else 'model'} to {training_args.output_dir}")
    return None


def _share_like_other_files(output_dir: str, started: float) -> None:
    """safetensors writes its files (the model, the adapter, in checkpoints too) readable by their owner only; give
    the files this run wrote the permissions the umask allows, like the rest of the run's files."""
    grant_umask_permissions(output_dir, newer_than=started - 1, folders=False)


def _signal_received(trainer) -> int:
    """The signal that stopped training on this process; SIGTERM where another process received it (the stop is
    shared across processes), as a launcher or scheduler stops the others."""
    from trl_diversity.trainer.safety import SignalCheckpoint

    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, SignalCheckpoint) and callback.received is not None:
            return int(callback.received)
    return int(signal.SIGTERM)


def _sharded(trainer) -> bool:
    """FSDP or ZeRO-3: generating with the unwrapped model would need collectives of every rank."""
    plugin = trainer.accelerator.state.deepspeed_plugin
    return trainer.is_fsdp_enabled or (plugin is not None and plugin.zero_stage == 3)


def _first_process() -> bool:
    """Rank 0 of a distributed launch (torchrun and accelerate set RANK), or a single process."""
    return os.environ.get("RANK", "0") == "0"


def _resume_argument(value: str | None) -> str | bool | None:
    """`--resume_from_checkpoint true` resumes from the latest checkpoint in output_dir; a path names one."""
    if isinstance(value, str) and value.lower() in ("true", "latest"):
        return True
    if isinstance(value, str) and value.lower() in ("false", "none", ""):
        return None
    return value
