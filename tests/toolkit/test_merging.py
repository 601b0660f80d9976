import json
import shutil
from pathlib import Path

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


def _adapter(base_folder, folder, seed, r, **settings):
    """A LoRA adapter with random (non-zero) A and B, as after training."""
    torch.manual_seed(seed)
    settings = {"lora_alpha": 2 * r, "target_modules": ["q_proj", "v_proj"], **settings}
    config = LoraConfig(r=r, init_lora_weights=False, task_type="CAUSAL_LM", **settings)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_folder), config)
    with torch.no_grad():  # DoRA's magnitudes and trained biases start at the base's values: move them
        for name, parameter in model.named_parameters():
            if parameter.requires_grad and "lora_" not in name:
                parameter.add_(0.1 * torch.randn_like(parameter))
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


# ---------------------------------------------------------------------------------------------------------------------
# A dial point as one LoRA adapter: [(1 - w) s_a A_a; w s_b A_b] and [B_a, B_b], rank r_a + r_b, scaling 1


def _lerp_model(base_folder, full_a, full_b, weight):
    model = AutoModelForCausalLM.from_pretrained(base_folder)
    model.load_state_dict({name: torch.lerp(full_a[name], full_b[name], weight) for name in full_a})
    return model.eval()


def _batch():
    torch.manual_seed(0)
    return {"input_ids": torch.randint(7, 60, (3, 9)), "attention_mask": torch.ones(3, 9, dtype=torch.long)}


def _assert_adapter_is_the_lerp(base_folder, a, b, out, weight):
    """`out` (a saved adapter) equals the LERP of the two merged finetunes: weights after merging, and logits both
    as an unmerged adapter (as served, per request) and through `generate`'s loader."""
    from trl_diversity.toolkit.generation import load_generation_model

    full_a, full_b = _merged_full(base_folder, a), _merged_full(base_folder, b)
    for name, tensor in _merged_full(base_folder, out).items():
        torch.testing.assert_close(tensor, torch.lerp(full_a[name], full_b[name], weight), atol=1e-5, rtol=1e-5)
    batch = _batch()
    with torch.no_grad():
        expected = _lerp_model(base_folder, full_a, full_b, weight)(**batch).logits
        served = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_folder), out).eval()
        torch.testing.assert_close(served(**batch).logits, expected, atol=1e-5, rtol=1e-5)
        generating, _ = load_generation_model(str(out), device="cpu")
        torch.testing.assert_close(generating(**batch).logits, expected, atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def two_adapters(tiny_checkpoint, tmp_path_factory):
    """Two LoRA finetunes of one base, of different ranks and scalings."""
    root = tmp_path_factory.mktemp("adapters")
    return _adapter(tiny_checkpoint, root / "a", seed=1, r=4), _adapter(tiny_checkpoint, root / "b", seed=2, r=6)


@pytest.mark.parametrize("weight", [0.0, 0.3, 1.0])
def test_a_dial_point_written_as_an_adapter_is_exactly_the_weight_interpolation(
    tiny_checkpoint, two_adapters, tmp_path, weight
):
    a, b = two_adapters
    out = lerp_merge(a, b, weight, tmp_path / "point")
    assert not (out / "config.json").exists()  # an adapter, not a full checkpoint
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == 4 + 6 and config["lora_alpha"] == config["r"]  # rank r_a + r_b, scaling 1
    assert sorted(config["target_modules"]) == ["q_proj", "v_proj"]
    assert config["base_model_name_or_path"] == tiny_checkpoint
    assert not config["use_rslora"] and not config["use_dora"] and config["bias"] == "none"
    _assert_adapter_is_the_lerp(tiny_checkpoint, a, b, out, weight)


def test_adapters_on_different_modules_with_rslora_and_patterns_concatenate_exactly(tiny_checkpoint, tmp_path):
    """PEFT's `cat` targets the union of the modules: where one adapter is absent its rows are zero (its delta there
    is zero), so the pair need not target the same modules. Each adapter's own scaling (rsLoRA's alpha / sqrt(r),
    alpha_pattern, rank_pattern) goes into its A; the concatenated adapter is a plain LoRA of scaling 1."""
    a = _adapter(tiny_checkpoint, tmp_path / "a", seed=1, r=4, use_rslora=True)
    b = _adapter(
        tiny_checkpoint,
        tmp_path / "b",
        seed=2,
        r=3,
        lora_alpha=5,
        target_modules=["v_proj", "o_proj", "gate_proj"],
        rank_pattern={"gate_proj": 5},
        alpha_pattern={"o_proj": 11},
    )
    out = lerp_merge(a, b, 0.4, tmp_path / "point")
    config = json.loads((out / "adapter_config.json").read_text())
    assert sorted(config["target_modules"]) == ["gate_proj", "o_proj", "q_proj", "v_proj"]
    assert config["r"] == 4 + 5 and config["lora_alpha"] == 9 and not config["use_rslora"]
    _assert_adapter_is_the_lerp(tiny_checkpoint, a, b, out, 0.4)
    full = state(lerp_merge(a, b, 0.4, tmp_path / "full", merged=True))  # the same adapter, merged in memory
    full_a, full_b = _merged_full(tiny_checkpoint, a), _merged_full(tiny_checkpoint, b)
    for name, tensor in full.items():
        torch.testing.assert_close(tensor, torch.lerp(full_a[name], full_b[name], 0.4), atol=1e-5, rtol=1e-5)


REFUSED = {  # model B's LoRA settings (model A is a plain LoRA on q and v), and what the message says
    "dora": ({"use_dora": True}, "DoRA rescales"),
    "modules_to_save": ({"modules_to_save": ["lm_head"]}, "modules_to_save=['lm_head']"),
    "bias": ({"bias": "lora_only"}, "trains the base model's biases too (bias='lora_only')"),
    "lora_bias": ({"lora_bias": True}, "lora_bias=True"),
    "layers": ({"layers_to_transform": [1], "layers_pattern": "layers"}, "differ in layers_to_transform"),
    "regex": ({"target_modules": r".*\.(q_proj|k_proj)"}, "regular expression"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_pairs_that_are_not_one_adapter_are_refused_in_one_line_and_merge_with_merged(
    tiny_checkpoint, two_adapters, tmp_path, monkeypatch, case
):
    import trl_diversity.toolkit.merging as merging

    settings, reason = REFUSED[case]
    a = two_adapters[0]
    b = _adapter(tiny_checkpoint, tmp_path / "b", seed=2, r=4, **settings)
    with monkeypatch.context() as patched:  # refused from the two configs, before the base model is looked for
        patched.setattr(merging, "resolve_model", lambda name: pytest.fail("the base was loaded"))
        with pytest.raises(MergeError) as refused:
            lerp_merge(a, b, 0.5, tmp_path / "out")
    message = str(refused.value)
    assert "\n" not in message and message.startswith("Cannot write this interpolation as one LoRA adapter")
    assert reason in message and "--merged" in message
    assert merging.concatenation_refusal(a, b) in message
    assert not (tmp_path / "out").exists()
    if case == "lora_bias":  # no checkpoint holds it here either: the tiny Llama's layers have no bias
        with pytest.raises(MergeError, match="cannot be merged into its base .* has no bias"):
            lerp_merge(a, b, 0.5, tmp_path / "full", merged=True)
        return
    # As a full checkpoint it is the interpolation of the two merged finetunes, whatever they hold.
    out = lerp_merge(a, b, 0.5, tmp_path / "full", merged=True)
    full_a, full_b = _merged_full(tiny_checkpoint, a), _merged_full(tiny_checkpoint, b)
    for name, tensor in state(out).items():
        torch.testing.assert_close(tensor, torch.lerp(full_a[name], full_b[name], 0.5), atol=1e-5, rtol=1e-5)
    assert (out / "tokenizer.json").is_file()


@pytest.mark.parametrize("merged", [False, True])
def test_adapters_of_the_default_model_merge_without_a_hub_lookup(
    tiny_checkpoint, two_adapters, tmp_path, monkeypatch, merged
):
    """#33: adapters record `default` as their base, and merging them must not look `default` up on a hub (PEFT
    did, when saving: "Unable to fetch remote file ... config.json in default", or offline "Could not find a config
    file in default")."""
    import warnings

    import peft.utils.save_and_load

    monkeypatch.setattr("trl_diversity.defaults.default_model_path", lambda: Path(tiny_checkpoint))
    monkeypatch.setattr(
        peft.utils.save_and_load,
        "check_file_exists_on_hf_hub",
        lambda repo, *a, **k: pytest.fail(f"looked up {repo} on the hub"),
    )
    pair = []
    for source in two_adapters:
        copy = shutil.copytree(source, tmp_path / source.name)
        config = json.loads((copy / "adapter_config.json").read_text())
        (copy / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": "default"}))
        pair.append(copy)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = lerp_merge(*pair, 0.3, tmp_path / "out", merged=merged)
    messages = [str(w.message) for w in caught]
    assert not any("in default" in m for m in messages), messages
    if merged:
        assert (out / "config.json").is_file()
    else:  # it records `default` too, so that it loads on another machine
        assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == "default"
        _assert_adapter_is_the_lerp(tiny_checkpoint, *two_adapters, out, 0.3)
