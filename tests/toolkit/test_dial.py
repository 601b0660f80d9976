import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

import trl_diversity.toolkit.sweep as sweep_module
from trl_diversity.errors import UserError
from trl_diversity.toolkit.dial import TARGET_METRICS, Target, TargetOutOfReach, bisect_weight, dial
from trl_diversity.toolkit.evaluation import METRICS
from trl_diversity.toolkit.merging import lerp_merge
from trl_diversity.toolkit.sweep import PointEvaluator, SweepSettings

PROMPTS = ["write a short poem about the sea", "describe a quiet morning in a small town"]


def linear(start: float, end: float, calls: list | None = None):
    """A fake `measure`: the metric moves linearly from `start` at w=0 to `end` at w=1, with a +-0.02 CI."""

    def measure(weight):
        if calls is not None:
            calls.append(weight)
        mean = start + (end - start) * weight
        return {"metrics": {"adherence": {"mean": mean, "low": mean - 0.02, "high": mean + 0.02}}}

    return measure


@pytest.mark.parametrize("start, end", [(0.6, 0.4), (0.4, 0.6)])  # falling (adherence) or rising (diversity)
def test_bisection_halves_the_bracket_that_holds_the_target(start, end):
    calls = []
    weight, evaluations = bisect_weight(linear(start, end, calls), Target("adherence", 0.55), tolerance=0.001)
    expected = 0.25 if start > end else 0.75
    assert weight == expected
    assert calls == [0.0, 1.0, 0.5, expected]  # only the weights it needs
    assert evaluations[-1] == {"weight": expected, "mean": pytest.approx(0.55), "low": pytest.approx(0.53),
                               "high": pytest.approx(0.57)}  # fmt: skip


def test_bisection_stops_at_max_evaluations_with_the_closest_point():
    # 0.5337 is reached at w = 0.3315; after 6 evaluations the bracket is [0.3125, 0.375].
    weight, evaluations = bisect_weight(linear(0.6, 0.4), Target("adherence", 0.5337), 1e-6, max_evaluations=6)
    assert len(evaluations) == 6
    assert weight == 0.3125 and [e["weight"] for e in evaluations][2:] == [0.5, 0.25, 0.375, 0.3125]


def test_a_target_at_an_end_takes_that_end():
    weight, evaluations = bisect_weight(linear(0.6, 0.4), Target("adherence", 0.405), tolerance=0.01)
    assert weight == 1.0 and len(evaluations) == 2


@pytest.mark.parametrize("value, closest", [(0.7, "weight 0 (the quality model"), (0.3, "weight 1 (the diversity")])
def test_a_target_outside_the_span_names_the_closest_end(value, closest):
    with pytest.raises(TargetOutOfReach) as error:
        bisect_weight(linear(0.6, 0.4), Target("adherence", value))
    message = str(error.value)
    assert "outside what the two models span" in message and f"The closest end is {closest}" in message
    assert "0.600 [0.580, 0.620] at weight 0" in message and "0.400 [0.380, 0.420] at weight 1" in message


def test_target_parsing():
    assert Target.parse("adherence=0.55") == Target("adherence", 0.55)
    assert Target.parse("diversity=0.5") == Target("pairwise_diversity", 0.5)
    assert Target.parse("quality = 0.6") == Target("adherence", 0.6)
    with pytest.raises(UserError, match="did you mean `adherence`"):
        Target.parse("adherance=0.5")
    with pytest.raises(UserError, match="metric=value"):
        Target.parse("0.5")
    with pytest.raises(UserError, match="not a number"):
        Target.parse("vendi=high")
    assert set(TARGET_METRICS) <= set(METRICS)  # every target names a metric that evaluation computes


# ---------------------------------------------------------------------------------------------------------------------
# On a tiny model: two LoRA finetunes of one base


def _adapter(base, folder, seed):
    torch.manual_seed(seed)
    config = LoraConfig(
        r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False, task_type="CAUSAL_LM"
    )
    get_peft_model(AutoModelForCausalLM.from_pretrained(base), config).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def finetunes(tiny_checkpoint, tmp_path_factory):
    root = tmp_path_factory.mktemp("dial")
    return _adapter(tiny_checkpoint, root / "quality", 1), _adapter(tiny_checkpoint, root / "diversity", 2)


def _settings(base, finetunes, cache):
    return SweepSettings(
        base=base,
        model_a=finetunes[0],
        model_b=finetunes[1],
        output_dir=str(cache),
        prompts=PROMPTS,
        num_samples=3,
        max_new_tokens=6,
    )


def test_dial_on_a_tiny_model_reuses_the_cache_and_writes_the_merge(tiny_checkpoint, finetunes, tmp_path, monkeypatch):
    settings = _settings(tiny_checkpoint, finetunes, tmp_path / "cache")
    evaluate = PointEvaluator(settings)
    ends = [evaluate("merge", w)["metrics"]["adherence"]["mean"] for w in (0.0, 1.0)]  # as a sweep would have
    assert abs(ends[0] - ends[1]) > 0.01, ends  # the two finetunes differ, so there is something to dial
    target = Target("adherence", (ends[0] + ends[1]) / 2)

    generated = []
    real = sweep_module.generate_records
    monkeypatch.setattr(
        sweep_module, "generate_records", lambda *a, **k: generated.append(k["label"]) or real(*a, **k)
    )
    result = dial(settings, target, tmp_path / "dialed", tolerance=0.002, max_evaluations=6)

    weights = [e["weight"] for e in result["evaluations"]]
    assert weights[:3] == [0.0, 1.0, 0.5] and [e["cached"] for e in result["evaluations"][:2]] == [True, True]
    assert generated == [f"LERP w={w:g}" for w in weights[2:]]  # the ends came from the cache
    assert result["weight"] in weights
    chosen = min(result["evaluations"], key=lambda e: abs(e["mean"] - target.value))
    assert result["measured"]["mean"] == chosen["mean"] and result["weight"] == chosen["weight"]
    assert result["reached"] == (abs(chosen["mean"] - target.value) <= 0.002)

    out = tmp_path / "dialed"
    assert json.loads((out / "dial.json").read_text()) == json.loads(json.dumps(result))
    low, high = result["measured"]["low"], result["measured"]["high"]
    assert low <= result["measured"]["mean"] <= high
    # The written model is the merge at the chosen weight (an adapter, like `merge` of two adapters).
    reference = lerp_merge(finetunes[0], finetunes[1], result["weight"], tmp_path / "reference")
    written, expected = (
        load_file(out / "adapter_model.safetensors"),
        load_file(reference / "adapter_model.safetensors"),
    )
    assert written.keys() == expected.keys()
    assert all(torch.equal(written[k], expected[k]) for k in written)
    # The sweep-like evaluator above kept its end models; the dial's intermediate merges are not left behind.
    kept = sorted(p.name.rsplit("-", 1)[0] for p in (tmp_path / "cache" / "models").iterdir())
    assert kept == ["lerp-0", "lerp-1"]

    # A second target on the same cache evaluates only weights it has not seen.
    generated.clear()
    dial(settings, Target("adherence", ends[0]), tmp_path / "end", tolerance=0.002)
    assert generated == []


@pytest.mark.slow
def test_dial_command_end_to_end(tiny_checkpoint, finetunes, tmp_path):
    script = Path(sys.executable).parent / "trl-diversity"
    if not script.is_file():
        pytest.skip("the trl-diversity console script is not installed")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    common = ["--quality_model", finetunes[0], "--diversity_model", finetunes[1], "--base", tiny_checkpoint]
    common += ["--prompts", str(prompts), "--num_samples", "3", "--max_new_tokens", "6", "--cache", tmp_path / "c"]

    def run(*args):
        command = [str(script), "dial", *map(str, common), *map(str, args)]
        return subprocess.run(command, capture_output=True, text=True, env=dict(os.environ), timeout=600)

    far = run("--target", "adherence=1.5", "--output", tmp_path / "far")
    assert far.returncode == 2 and "Traceback" not in far.stderr
    assert "outside what the two models span" in far.stderr and "The closest end is weight" in far.stderr
    assert not (tmp_path / "far").exists()

    points = [json.loads(p.read_text()) for p in (tmp_path / "c" / "points").glob("*.json")]
    ends = sorted(p["metrics"]["adherence"]["mean"] for p in points)
    assert len(ends) == 2  # the out-of-reach run cached the two ends it measured
    done = run("--target", f"adherence={(ends[0] + ends[1]) / 2:.4f}", "--output", tmp_path / "dialed", "--merged")
    assert done.returncode == 0, done.stderr
    assert "Wrote the merged model to" in done.stdout
    assert done.stdout.startswith("w=0: adherence") and "(cached)" in done.stdout.splitlines()[0]  # one line a point
    assert (tmp_path / "dialed" / "config.json").is_file()  # --merged: a full checkpoint
    record = json.loads((tmp_path / "dialed" / "dial.json").read_text())
    assert record["target"]["metric"] == "adherence" and 0 < record["weight"] < 1
    assert [e["cached"] for e in record["evaluations"][:2]] == [True, True]  # the ends from the first run

    again = run("--target", "adherence=0.5", "--output", tmp_path / "dialed")
    assert again.returncode == 2 and "--overwrite" in again.stderr


def test_a_pair_that_is_not_one_adapter_is_refused_before_any_point_is_evaluated(
    tiny_checkpoint, finetunes, tmp_path, monkeypatch
):
    """Each dial point is evaluated as one LoRA adapter (rank r_a + r_b); a DoRA finetune has no such adapter, and
    the dial says so at once rather than after minutes of bisection."""
    torch.manual_seed(3)
    config = LoraConfig(r=4, target_modules=["q_proj"], use_dora=True, init_lora_weights=False, task_type="CAUSAL_LM")
    get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_checkpoint), config).save_pretrained(tmp_path / "dora")
    monkeypatch.setattr(sweep_module, "PointEvaluator", lambda *a, **k: pytest.fail("a point was evaluated"))
    settings = _settings(tiny_checkpoint, (finetunes[0], str(tmp_path / "dora")), tmp_path / "cache")
    with pytest.raises(UserError) as refused:
        dial(settings, Target("adherence", 0.5), tmp_path / "out")
    message = str(refused.value)
    assert "\n" not in message and "is a DoRA adapter" in message and "--merged" in message
    assert not (tmp_path / "out").exists()
