"""Weight interpolation between two finetunes of one base: `theta = (1 - w) * A + w * B`.

- Full checkpoints: streamed tensor by tensor, one output shard at a time, so peak memory stays near one shard
  rather than two models.
- LoRA adapters on one base: the interpolation of their weight deltas, `(1 - w) * s_A B_A A_A + w * s_B B_B A_B`,
  is exactly a LoRA of rank `r_A + r_B` (PEFT's `add_weighted_adapter(..., combination_type="cat")` builds it),
  saved as an adapter (by default: one base serves every point of the dial, each request naming its adapter) or
  merged into a full checkpoint (`merged=True`). A pair whose interpolation no LoRA adapter holds (DoRA,
  `modules_to_save`, trained biases, ...) is refused as an adapter and written only with `merged=True`.

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

    `model_a` and `model_b` are both full checkpoints or both adapters (folders). For adapters, `base` overrides the
    base model named in their configs. Two LoRA adapters give a LoRA adapter of rank `r_a + r_b` on that base, exactly
    the interpolation (loadable with `PeftModel.from_pretrained`, and by `generate --model`); `merged=True` writes a
    full checkpoint instead.
    """
    a, b, output = Path(model_a), Path(model_b), Path(output_dir)
    if not 0.0 <= weight <= 1.0:
        raise MergeError(f"The interpolation weight must lie in [0, 1], got {weight}.")
    if output.exists() and not overwrite:
        raise FileExistsError(f"{output} already exists; pass overwrite=True (--overwrite) to replace it.")
    kind, plan = _plan(a, b, base, merged)
    with atomic_folder(output) as staging:
        if kind == "adapter":
            _merge_adapters(a, b, weight, staging, plan, merged)
        else:
            _merge_full(plan, a, weight, staging)
    return output


def check_lerp_pair(
    model_a: str | os.PathLike, model_b: str | os.PathLike, *, base: str | None = None, merged: bool = False
) -> None:
    """Raise the `MergeError` that `lerp_merge` would raise for this pair, loading no model: different kinds,
    architectures, tokenizers or bases, or (without `merged`) two adapters whose interpolation is not one adapter."""
    _plan(Path(model_a), Path(model_b), base, merged)


def concatenation_refusal(model_a: str | os.PathLike, model_b: str | os.PathLike) -> str | None:
    """Why two adapters' interpolation is not one LoRA adapter of their concatenated factors (DoRA, trained
    biases, `modules_to_save`, ...), or None when it is (or when either is not an adapter)."""
    a, b = Path(model_a), Path(model_b)
    if _kind(a) != "adapter" or _kind(b) != "adapter":
        return None
    return _concatenation_refusal(a, _adapter_config(a), b, _adapter_config(b))


def _plan(a: Path, b: Path, base: str | None, merged: bool) -> tuple[str, dict]:
    kind_a, kind_b = _kind(a), _kind(b)
    if kind_a != kind_b:
        adapter = a if kind_a == "adapter" else b
        raise MergeError(
            f"Cannot interpolate {_KIND_NAMES[kind_a]} ({a}) with {_KIND_NAMES[kind_b]} ({b}): pass two of the same "
            f"kind. To make a full checkpoint of the adapter, `trl-diversity merge {adapter} {adapter} --weight 0 "
            "--merged --output FOLDER` merges it into its base."
        )
    if kind_a == "adapter":
        return "adapter", _plan_adapter_merge(a, b, base, merged)
    _check_same_tokenizer(a, b)
    return "full", _plan_full_merge(a, b)


_KIND_NAMES = {"adapter": "an adapter", "full": "a full checkpoint"}


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
#
# The interpolation of two LoRA finetunes of one base is exactly one LoRA adapter:
#     (1 - w) s_a B_a A_a + w s_b B_b A_b = [B_a, B_b] @ [(1 - w) s_a A_a; w s_b A_b]    (scaling 1, rank r_a + r_b)
# PEFT's `add_weighted_adapter(..., combination_type="cat")` builds it: it multiplies each adapter's weight and
# scaling into its A, concatenates, and gives the new adapter `lora_alpha = r`. A module that only one adapter
# targets gets that adapter's rows and zeros for the other's (its delta there is zero), so the adapters may target
# different modules (and have different ranks, `rank_pattern` and `alpha_pattern`): the new adapter targets the union.
# What the concatenation cannot carry is anything that is not a product of LoRA factors; such pairs are refused
# for an adapter output, and `merged=True` merges each adapter into the base and interpolates the full weights.


def _adapter_config(folder: Path) -> dict:
    return json.loads((folder / "adapter_config.json").read_text())


# Variants of LoRA whose update is not `scaling * B @ A` (each key is off when unset, False or empty).
_LORA_VARIANTS = ("use_qalora", "use_bdlora", "arrow_config", "velora_config", "monteclora_config", "kasa_config")
# Settings that place or shape the adapter and that the concatenated adapter takes from model A alone: both must
# agree. (`exclude_modules` from A could drop modules that only B targets; `layers_to_transform` likewise.)
_SHARED_SETTINGS = (
    "layers_to_transform",
    "layers_pattern",
    "exclude_modules",
    "fan_in_fan_out",
    "layer_replication",
    "alora_invocation_tokens",
    "megatron_config",
)


def _not_lora_factors(folder: Path, config: dict) -> str | None:
    """Why the adapter's update is not `scaling * B @ A` alone, or None when it is."""
    if config.get("peft_type") != "LORA":
        return f"{folder} is a {config.get('peft_type')} adapter, not LoRA"
    if config.get("use_dora"):
        return (
            f"{folder} is a DoRA adapter, and DoRA rescales each column of the updated weight by a learned "
            "magnitude over its norm, so its update is no product of LoRA factors"
        )
    if config.get("bias", "none") != "none":
        return f"{folder} trains the base model's biases too (bias={config['bias']!r}): full tensors, not LoRA factors"
    if config.get("lora_bias"):
        return f"{folder} trains a bias on lora_B (lora_bias=True), which a concatenation of the factors drops"
    if config.get("modules_to_save"):
        return (
            f"{folder} trains whole modules outside LoRA (modules_to_save={config['modules_to_save']}): full "
            "weights, not low-rank factors"
        )
    if config.get("trainable_token_indices"):
        return f"{folder} trains embedding rows outside LoRA (trainable_token_indices), not low-rank factors"
    if config.get("target_parameters"):
        return f"{folder} puts LoRA on parameters (target_parameters), which PEFT cannot concatenate"
    variant = next((key for key in _LORA_VARIANTS if config.get(key)), None)
    if variant is not None:
        return f"{folder} is a LoRA variant ({variant}) whose update is not a plain product of its factors"
    return None


def _concatenation_refusal(a: Path, config_a: dict, b: Path, config_b: dict) -> str | None:
    """Why the two adapters' interpolation is not one LoRA adapter of their concatenated factors, or None."""
    for folder, config in ((a, config_a), (b, config_b)):
        reason = _not_lora_factors(folder, config)
        if reason is not None:
            return reason
    kinds = {key: isinstance(config.get("target_modules"), str) for key, config in (("a", config_a), ("b", config_b))}
    if kinds["a"] != kinds["b"]:
        return (
            f"one adapter names its target modules by a regular expression and the other by a list "
            f"({config_a.get('target_modules')!r} vs {config_b.get('target_modules')!r}), which PEFT cannot join"
        )
    for key in _SHARED_SETTINGS:
        if config_a.get(key) != config_b.get(key):
            return (
                f"they differ in {key} ({config_a.get(key)!r} vs {config_b.get(key)!r}), and one adapter holds one "
                f"{key}"
            )
    return None


def _common_base(a: Path, config_a: dict, b: Path, config_b: dict, base: str | None) -> str:
    if base is not None:
        return base
    base_a, base_b = config_a.get("base_model_name_or_path"), config_b.get("base_model_name_or_path")
    if is_default_model(base_a) and is_default_model(base_b):  # `default`, or its cache folder on some machine
        return DEFAULT_MODEL_NAMES[0]
    if base_a != base_b:
        raise MergeError(
            f"The adapters were trained on different bases ({base_a!r} vs {base_b!r}); interpolation needs one base. "
            "If both are copies of the same model, name it with base=... (--base)."
        )
    return base_a


def _plan_adapter_merge(a: Path, b: Path, base: str | None, merged: bool) -> dict:
    """The base, and whether the interpolation is one concatenated adapter; refuses (reading only the two
    adapter_config.json files) a pair of different bases, or one whose interpolation no LoRA adapter holds when an
    adapter is to be written."""
    config_a, config_b = _adapter_config(a), _adapter_config(b)
    base = _common_base(a, config_a, b, config_b, base)
    refusal = _concatenation_refusal(a, config_a, b, config_b)
    if refusal is not None and not merged:
        raise MergeError(
            f"Cannot write this interpolation as one LoRA adapter: {refusal}. Pass merged=True (--merged) to write "
            "it as a full checkpoint."
        )
    return {"base": base, "concatenate": refusal is None}


def _merge_adapters(a: Path, b: Path, weight: float, staging: Path, plan: dict, merged: bool) -> None:
    from transformers import AutoTokenizer

    base = plan["base"]
    base_path = resolve_model(base)
    if plan["concatenate"]:
        _concatenate_adapters(a, b, weight, staging, base, base_path, merged)
    else:
        _interpolate_merged_adapters(a, b, weight, staging, base, base_path)
    if merged:
        AutoTokenizer.from_pretrained(base_path).save_pretrained(staging)


def _load_adapters(base_path: str, base: str, adapters: dict[str, Path]):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    (first, folder), *rest = adapters.items()
    model = PeftModel.from_pretrained(model, folder, adapter_name=first)
    for name, folder in rest:
        try:
            model.load_adapter(folder, adapter_name=name)
        except Exception as error:
            raise MergeError(
                f"{folder} does not fit the base model {base!r} that {adapters[first]} fits: {error}"
            ) from error
    # In memory each adapter names the local folder as its base, where PEFT finds config.json when saving; a recorded
    # `default` (or a hub id) would send PEFT to the hub to look for it.
    for config in model.peft_config.values():
        config.base_model_name_or_path = base_path
    return model


def _concatenate_adapters(
    a: Path, b: Path, weight: float, staging: Path, base: str, base_path: str, merged: bool
) -> None:
    from peft.tuners.lora import LoraLayer

    model = _load_adapters(base_path, base, {"a": a, "b": b})
    model.add_weighted_adapter(["a", "b"], [1.0 - weight, weight], "lerp", combination_type="cat")
    # The scalings are inside A now. The new adapter's scaling is lora_alpha / r = 1, unless it inherited rsLoRA from
    # model A (lora_alpha / sqrt(r)): make it a plain LoRA of scaling 1.
    model.peft_config["lerp"].use_rslora = False
    for name, module in model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        if "lerp" in module.scaling:
            module.scaling["lerp"] = 1.0
        elif "a" in module.scaling or "b" in module.scaling:  # the checks above should make this impossible
            raise MergeError(f"The concatenated adapter leaves out {name}, where {a} or {b} has LoRA factors.")
    model.set_adapter("lerp")
    if merged:
        model.merge_and_unload(adapter_names=["lerp"]).save_pretrained(staging)
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


def _interpolate_merged_adapters(a: Path, b: Path, weight: float, staging: Path, base: str, base_path: str) -> None:
    """Any two adapters of one base, as a full checkpoint: each merged into the base, then the weights interpolated."""

    def merged_into_base(name: str, folder: Path):
        try:
            return _load_adapters(base_path, base, {name: folder}).merge_and_unload()
        except (RuntimeError, ValueError) as error:  # e.g. lora_bias on layers without a bias
            raise MergeError(f"{folder} cannot be merged into its base {base!r}: {error}") from error

    model_a, model_b = merged_into_base("a", a), merged_into_base("b", b)
    tensors_b = dict(model_b.named_parameters()) | dict(model_b.named_buffers())
    with torch.no_grad():  # named_* lists a tied weight once, so each is interpolated once
        for name, tensor in [*model_a.named_parameters(), *model_a.named_buffers()]:
            if tensor.is_floating_point():
                tensor.lerp_(tensors_b[name].to(tensor.dtype), weight)
    del model_b
    model_a.save_pretrained(staging)
