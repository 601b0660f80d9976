import json

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file
from tiny import build_model, build_tokenizer, save_tiny_checkpoint
from transformers import AutoModelForCausalLM

from trl_diversity.toolkit.merging import MergeError, lerp_merge


def state(folder):
    return AutoModelForCausalLM.from_pretrained(folder).state_dict()


@pytest.fixture(scope="module")
def two_finetunes(tmp_path_factory):
    root = tmp_path_factory.mktemp("finetunes")
    return save_tiny_checkpoint(root / "a", seed=1), save_tiny_checkpoint(root / "b", seed=2)


@pytest.mark.parametrize("weight", [0.0, 0.5, 1.0])
def test_full_checkpoint_merge_is_the_weight_interpolation(two_finetunes, tmp_path, weight):
    a, b = two_finetunes
    out = lerp_merge(a, b, weight, tmp_path / "merged")
    merged, state_a, state_b = state(out), state(a), state(b)
    for name, tensor in merged.items():
        torch.testing.assert_close(tensor, (1 - weight) * state_a[name] + weight * state_b[name])
    assert (out / "tokenizer.json").is_file() and (out / "config.json").is_file()


def test_sharded_checkpoints_merge_shard_by_shard(tmp_path):
    tokenizer = build_tokenizer()
    for name, seed in (("a", 1), ("b", 2)):
        build_model(len(tokenizer), seed=seed).save_pretrained(tmp_path / name, max_shard_size="100KB")
    assert (tmp_path / "a" / "model.safetensors.index.json").is_file()
    out = lerp_merge(tmp_path / "a", tmp_path / "b", 0.25, tmp_path / "merged")
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    first_shard = sorted(out.glob("*.safetensors"))[0]
    assert len(load_file(first_shard)) < len(index["weight_map"])  # each shard holds part of the model
    merged, state_a, state_b = state(out), state(tmp_path / "a"), state(tmp_path / "b")
    for name, tensor in merged.items():
        torch.testing.assert_close(tensor, 0.75 * state_a[name] + 0.25 * state_b[name])


def _adapter(base_folder, folder, seed, r):
    torch.manual_seed(seed)
    config = LoraConfig(
        r=r, lora_alpha=2 * r, target_modules=["q_proj", "v_proj"], init_lora_weights=False, task_type="CAUSAL_LM"
    )
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_folder), config)
    model.save_pretrained(folder)
    return folder


def _merged_full(base_folder, adapter_folder):
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_folder), adapter_folder)
    return model.merge_and_unload().state_dict()


@pytest.mark.parametrize("merged", [False, True])
def test_lora_merge_equals_the_interpolation_of_the_merged_models(tiny_checkpoint, tmp_path, merged):
    a = _adapter(tiny_checkpoint, tmp_path / "a", seed=1, r=4)
    b = _adapter(tiny_checkpoint, tmp_path / "b", seed=2, r=8)  # ranks may differ
    out = lerp_merge(a, b, 0.3, tmp_path / "lerp", merged=merged)
    if merged:
        got = state(out)
    else:
        assert (out / "adapter_config.json").is_file()
        got = _merged_full(tiny_checkpoint, out)
    full_a, full_b = _merged_full(tiny_checkpoint, a), _merged_full(tiny_checkpoint, b)
    for name, tensor in got.items():
        torch.testing.assert_close(tensor, 0.7 * full_a[name] + 0.3 * full_b[name], atol=1e-5, rtol=1e-5)


def test_mismatched_inputs_are_refused_before_anything_is_written(two_finetunes, tiny_checkpoint, tmp_path):
    a, b = two_finetunes
    tokenizer = build_tokenizer()
    wider = build_model(len(tokenizer), hidden_size=64)
    wider.save_pretrained(tmp_path / "wider")
    with pytest.raises(MergeError, match="different architectures"):
        lerp_merge(a, tmp_path / "wider", 0.5, tmp_path / "out")

    other_vocab = build_tokenizer(extra_words=("zyzzyva",))
    build_model(len(other_vocab), seed=3).save_pretrained(tmp_path / "other")
    other_vocab.save_pretrained(tmp_path / "other")
    with pytest.raises(MergeError):  # one more vocabulary row: different config and tokenizer
        lerp_merge(a, tmp_path / "other", 0.5, tmp_path / "out")

    adapter = _adapter(tiny_checkpoint, tmp_path / "adapter", seed=1, r=4)
    with pytest.raises(MergeError, match="same kind"):
        lerp_merge(a, adapter, 0.5, tmp_path / "out")
    with pytest.raises(MergeError, match=r"\[0, 1\]"):
        lerp_merge(a, b, 1.5, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no staging folder left


def test_adapters_of_different_bases_are_refused(tiny_checkpoint, two_finetunes, tmp_path):
    a = _adapter(tiny_checkpoint, tmp_path / "a", seed=1, r=4)
    b = _adapter(two_finetunes[0], tmp_path / "b", seed=2, r=4)
    with pytest.raises(MergeError, match="different bases"):
        lerp_merge(a, b, 0.5, tmp_path / "out")


def test_existing_output_needs_overwrite(two_finetunes, tmp_path):
    a, b = two_finetunes
    lerp_merge(a, b, 0.5, tmp_path / "out")
    with pytest.raises(FileExistsError, match="--overwrite"):
        lerp_merge(a, b, 0.25, tmp_path / "out")
    lerp_merge(a, b, 0.25, tmp_path / "out", overwrite=True)
    torch.testing.assert_close(
        state(tmp_path / "out")["lm_head.weight"],
        0.75 * state(a)["lm_head.weight"] + 0.25 * state(b)["lm_head.weight"],
    )
