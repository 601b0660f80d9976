"""Weight interpolation between two finetunes of one base: `theta = (1 - w) * A + w * B`.

- Full checkpoints: streamed tensor by tensor, one output shard at a time, so peak memory stays near one shard
  rather than two models.
- LoRA adapters on one base: the interpolation of their weight deltas, `(1 - w) * s_A B_A A_A + w * s_B B_B A_B`,
  is exactly a LoRA of rank `r_A + r_B` (PEFT's `add_weighted_adapter(..., combination_type="cat")` builds it),
  saved as an adapter or merged into a full checkpoint.

Everything is checked before anything is written, and the output is written to a temporary folder beside the
target and renamed into place, so an interrupted merge never leaves a half-written model.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from trl_diversity.atomic import atomic_folder
from trl_diversity.defaults import DEFAULT_MODEL_NAMES, is_default_model, resolve_model
from trl_diversity.errors import UserError

# Config keys that may differ between two finetunes of the same architecture.
_IGNORED_CONFIG_KEYS = {"_name_or_path", "transformers_version", "dtype", "torch_dtype", "use_cache"}
_MODEL_FILES = ("config.json", "generation_config.json")


class MergeError(UserError):
    """Two models cannot be interpolated (different architectures, shapes, bases or tokenizers)."""


def lerp_merge(
    model_a: str | os.PathLike,
    model_b: str | os.PathLike,
    weight: float,
    output_dir: str | os.PathLike,
    *,
    base: str | None = None,
    merged: bool = False,
    overwrite: bool = False,
) -> Path:
    """Write `(1 - weight) * model_a + weight * model_b` to `output_dir` and return its path.

    `model_a` and `model_b` are both full checkpoints or both LoRA adapters (folders). For adapters, `base` overrides
    the base model named in their configs, and `merged=True` writes a full checkpoint instead of an adapter.
    """
    a, b, output = Path(model_a), Path(model_b), Path(output_dir)
    if not 0.0 <= weight <= 1.0:
        raise MergeError(f"The interpolation weight must lie in [0, 1], got {weight}.")
    if output.exists() and not overwrite:
        raise FileExistsError(f"{output} already exists; pass overwrite=True (--overwrite) to replace it.")
    kinds = {_kind(a), _kind(b)}
    if kinds == {"adapter"}:
        with atomic_folder(output) as staging:
            _merge_adapters(a, b, weight, staging, base, merged)
    elif kinds == {"full"}:
        _check_same_tokenizer(a, b)
        plan = _plan_full_merge(a, b)
        with atomic_folder(output) as staging:
            _merge_full(plan, a, weight, staging)
    else:
        raise MergeError(f"Cannot interpolate a {_kind(a)} ({a}) with a {_kind(b)} ({b}): pass two of the same kind.")
    return output


def _kind(folder: Path) -> str:
    if (folder / "adapter_config.json").is_file():
        return "adapter"
    if (folder / "config.json").is_file() and list(folder.glob("*.safetensors")):
        return "full"
    raise MergeError(f"{folder} is neither a LoRA adapter nor a safetensors checkpoint folder.")


# --------------------------------------------------------------------------------------------------------------------
# Full checkpoints


def _tensor_files(folder: Path) -> dict[str, Path]:
    """Tensor name -> the safetensors file holding it."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {name: folder / file for name, file in weight_map.items()}
    files = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(path, "pt") as f:
            files.update({name: path for name in f.keys()})
    return files


def _shapes(files: dict[str, Path]) -> dict[str, tuple[list[int], str]]:
    shapes = {}
    for path in set(files.values()):
        with safe_open(path, "pt") as f:
            for name in f.keys():
                sliced = f.get_slice(name)
                shapes[name] = (sliced.get_shape(), sliced.get_dtype())
    return shapes


def _config(folder: Path) -> dict:
    config = json.loads((folder / "config.json").read_text())
    return {k: v for k, v in config.items() if k not in _IGNORED_CONFIG_KEYS}


def _plan_full_merge(a: Path, b: Path) -> dict:
    config_a, config_b = _config(a), _config(b)
    if config_a != config_b:
        differing = sorted(k for k in set(config_a) | set(config_b) if config_a.get(k) != config_b.get(k))
        raise MergeError(f"{a} and {b} have different architectures (config keys {differing} differ).")
    files_a, files_b = _tensor_files(a), _tensor_files(b)
    if set(files_a) != set(files_b):
        only = sorted(set(files_a) ^ set(files_b))[:5]
        raise MergeError(f"{a} and {b} hold different tensors (e.g. {only}).")
    shapes_a, shapes_b = _shapes(files_a), _shapes(files_b)
    mismatched = [n for n in files_a if shapes_a[n][0] != shapes_b[n][0]]
    if mismatched:
        name = mismatched[0]
        raise MergeError(f"Tensor {name} has shape {shapes_a[name][0]} in {a} but {shapes_b[name][0]} in {b}.")
    return {"files_a": files_a, "files_b": files_b}


def _merge_full(plan: dict, a: Path, weight: float, staging: Path) -> None:
    files_a, files_b = plan["files_a"], plan["files_b"]
    shards = sorted(set(files_a.values()))
    weight_map = {}
    for shard in shards:
        names = sorted(n for n, f in files_a.items() if f == shard)
        merged = {}
        with safe_open(shard, "pt") as fa:
            metadata = fa.metadata()
            for name in names:
                tensor_a = fa.get_tensor(name)
                with safe_open(files_b[name], "pt") as fb:
                    tensor_b = fb.get_tensor(name)
                if tensor_a.is_floating_point():
                    mixed = torch.lerp(tensor_a.float(), tensor_b.float(), weight)
                    merged[name] = mixed.to(tensor_a.dtype)
                else:  # integer buffers (e.g. position ids) are not weights: keep model A's
                    merged[name] = tensor_a
        save_file(merged, staging / shard.name, metadata=metadata or {"format": "pt"})
        weight_map.update({name: shard.name for name in names})
        del merged
    if len(shards) > 1:
        index = json.loads((a / "model.safetensors.index.json").read_text())
        index["weight_map"] = weight_map
        (staging / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    for path in a.iterdir():  # config, generation config and tokenizer files come from model A
        if path.is_file() and path.suffix != ".safetensors" and path.name != "model.safetensors.index.json":
            shutil.copy2(path, staging / path.name)


def _check_same_tokenizer(a: Path, b: Path) -> None:
    from transformers import AutoTokenizer

    def vocab(folder):
        try:
            return AutoTokenizer.from_pretrained(folder).get_vocab()
        except (OSError, ValueError):
            return None  # no tokenizer saved with the weights

    vocab_a, vocab_b = vocab(a), vocab(b)
    if vocab_a is not None and vocab_b is not None and vocab_a != vocab_b:
        raise MergeError(f"{a} and {b} have different tokenizers: their weights index different tokens.")


# --------------------------------------------------------------------------------------------------------------------
# LoRA adapters


def _adapter_config(folder: Path) -> dict:
    return json.loads((folder / "adapter_config.json").read_text())


def _merge_adapters(a: Path, b: Path, weight: float, staging: Path, base: str | None, merged: bool) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config_a, config_b = _adapter_config(a), _adapter_config(b)
    if base is None:
        base_a, base_b = config_a.get("base_model_name_or_path"), config_b.get("base_model_name_or_path")
        if is_default_model(base_a) and is_default_model(base_b):  # `default`, or its cache folder on some machine
            config_a["base_model_name_or_path"] = config_b["base_model_name_or_path"] = DEFAULT_MODEL_NAMES[0]
        if config_a.get("base_model_name_or_path") != config_b.get("base_model_name_or_path"):
            raise MergeError(
                f"The adapters were trained on different bases ({config_a.get('base_model_name_or_path')!r} vs "
                f"{config_b.get('base_model_name_or_path')!r}); interpolation needs one base. If both are copies "
                "of the same model, name it with base=... (--base)."
            )
        base = config_a.get("base_model_name_or_path")
    for config, folder in ((config_a, a), (config_b, b)):
        if config.get("peft_type") != "LORA" or config.get("use_rslora") or config.get("use_dora"):
            raise MergeError(
                f"{folder} is not a plain LoRA adapter (rsLoRA and DoRA scale their deltas differently); merge the "
                "adapters into full checkpoints first and interpolate those."
            )
    base_path = resolve_model(base)
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, a, adapter_name="a")
    try:
        model.load_adapter(b, adapter_name="b")
    except Exception as error:
        raise MergeError(f"{b} does not fit the base model {base!r} that {a} fits: {error}") from error
    # `cat` stacks the weighted factors: B = [B_a, B_b], A = [(1 - w) s_a A_a; w s_b A_b], scaling 1. Exact.
    model.add_weighted_adapter(["a", "b"], [1.0 - weight, weight], "lerp", combination_type="cat")
    model.set_adapter("lerp")
    if merged:
        full = model.merge_and_unload(adapter_names=["lerp"])
        full.save_pretrained(staging)
        AutoTokenizer.from_pretrained(base_path).save_pretrained(staging)
        return
    for name in ("a", "b"):
        model.delete_adapter(name)
    model.save_pretrained(staging, selected_adapters=["lerp"])
    nested = staging / "lerp"  # PEFT saves a non-default adapter in a subfolder named after it
    if nested.is_dir():
        for path in nested.iterdir():
            os.replace(path, staging / path.name)
        nested.rmdir()
    config = _adapter_config(staging)
    config["base_model_name_or_path"] = base
    (staging / "adapter_config.json").write_text(json.dumps(config, indent=2))
