import json

import pytest
import torch
from tiny import save_tiny_checkpoint
from transformers import AutoModelForCausalLM, AutoTokenizer

from trl_diversity import cli
from trl_diversity.toolkit.generation import generate_records, read_jsonl, render_prompt
from trl_diversity.toolkit.sweep import SweepSettings, run_sweep

PROMPTS = ["write a short poem about the sea", "describe a quiet morning in a small town"]


def test_cfg_generation_at_scale_one_equals_plain_sampling(tiny_checkpoint):
    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint)
    ids = torch.tensor([render_prompt(tokenizer, PROMPTS[0], chat=True)] * 3)
    negative = torch.tensor([render_prompt(tokenizer, "", chat=True)] * 3)

    def sample(**kwargs):
        torch.manual_seed(7)
        return model.generate(input_ids=ids, do_sample=True, max_new_tokens=10, top_k=0, **kwargs)

    plain = sample()
    assert torch.equal(sample(guidance_scale=1.0, negative_prompt_ids=negative), plain)
    assert not torch.equal(sample(guidance_scale=3.0, negative_prompt_ids=negative), plain)


def test_records_carry_settings_and_cost(tiny_checkpoint):
    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint)
    records = list(
        generate_records(
            model,
            tokenizer,
            PROMPTS,
            num_samples=3,
            max_new_tokens=6,
            guidance_scale=2.0,
            prompts_per_batch=2,
            progress=False,
        )
    )
    assert len(records) == 6 and [r["sample"] for r in records] == [0, 1, 2, 0, 1, 2]
    assert {r["prompt"] for r in records} == set(PROMPTS)
    assert all(r["forward_passes_per_token"] == 2 and r["guidance_scale"] == 2.0 for r in records)
    assert all(len(r["completion_ids"]) <= 6 and r["seconds"] >= 0 for r in records)


def test_generate_then_evaluate_commands(tiny_checkpoint, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    common = ["--prompts", str(prompts), "--num_samples", "3", "--max_new_tokens", "6"]
    cli.main(
        ["generate", "--model", tiny_checkpoint, "--label", "plain", "--output", str(tmp_path / "a.jsonl"), *common]
    )
    cli.main(
        [
            "generate",
            "--model",
            tiny_checkpoint,
            "--guidance_scale",
            "2",
            "--label",
            "cfg",
            "--output",
            str(tmp_path / "b.jsonl"),
            *common,
        ]
    )
    assert len(read_jsonl(tmp_path / "a.jsonl")) == 6
    cli.main(
        [
            "evaluate",
            str(tmp_path / "a.jsonl"),
            str(tmp_path / "b.jsonl"),
            "--fluency_model",
            tiny_checkpoint,
            "--reward",
            "test_toolkit:length_reward",
            "--output",
            str(tmp_path / "eval.json"),
        ]
    )
    summary = json.loads((tmp_path / "eval.json").read_text())
    assert set(summary) == {"plain", "cfg"}
    for entry in summary.values():
        for name in (
            "adherence",
            "fluency_nll",
            "reward",
            "pairwise_diversity",
            "base_lm_diversity",
            "vendi",
            "distinct_1",
            "distinct_2",
            "self_bleu",
        ):
            metric = entry["metrics"][name]
            assert metric["low"] <= metric["mean"] <= metric["high"], name
        assert 1.0 <= entry["metrics"]["vendi"]["mean"] <= 3.0
    assert summary["cfg"]["forward_passes_per_token"] == 2 and summary["plain"]["forward_passes_per_token"] == 1
    # the explicit generation configuration each file was sampled with is recorded in the evaluation
    generation = summary["cfg"]["generation"]
    assert generation["sampling"]["num_samples"] == 3 and generation["source"]["model"] == tiny_checkpoint
    assert generation["generation_config"]["guidance_scale"] == 2.0 and generation["generation_config"]["top_k"] == 0
    assert "repetition_penalty" in generation["generation_config"]
    assert "| cfg |" in (tmp_path / "eval.md").read_text()


def test_the_second_embedding_space_pools_each_text_alone_whatever_its_batch(tiny_checkpoint):
    from trl_diversity.toolkit.metrics import mean_pooled_states

    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint).eval()
    texts = [[5, 9, 13], [7], [21, 4, 4, 30, 8], []]
    batched = mean_pooled_states(model, texts, batch_size=4)
    with torch.no_grad():
        for row, ids in enumerate(texts[:3]):
            alone = model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[-1][0].mean(0)
            torch.testing.assert_close(batched[row], alone, atol=1e-5, rtol=1e-4)
    assert batched[3].isnan().all()  # an empty completion has nothing to pool
    torch.testing.assert_close(
        mean_pooled_states(model, texts, batch_size=1), batched, atol=1e-5, rtol=1e-4, equal_nan=True
    )


def test_an_empty_sample_is_left_out_of_the_pairwise_diversity_not_counted_as_most_diverse():
    from trl_diversity.toolkit.metrics import mean_pairwise_dissimilarity

    same, other, empty = [1.0, 0.0], [0.0, 1.0], [float("nan")] * 2
    vectors = torch.tensor([same, same, empty, same, other, other, empty, empty, same, empty, empty, empty])
    # group 1: one pair, identical; group 2: three pairs, 1 - cos = 1, 1, 0; group 3: one sample; group 4: none
    values = mean_pairwise_dissimilarity(vectors, 3)
    assert values[0] == pytest.approx(0.0, abs=1e-6) and values[1] == pytest.approx(2 / 3)
    assert values[2] != values[2] and values[3] != values[3]  # NaN: nothing to compare, dropped by the bootstrap


def length_reward(prompts, completions, **kwargs):
    return [len(c.split()) for c in completions]


def test_sweep_end_to_end_and_cached(tiny_checkpoint, tmp_path, monkeypatch):
    a, b = save_tiny_checkpoint(tmp_path / "quality", seed=1), save_tiny_checkpoint(tmp_path / "diversity", seed=2)
    settings = SweepSettings(
        base=tiny_checkpoint,
        model_a=str(a),
        model_b=str(b),
        output_dir=str(tmp_path / "sweep"),
        prompts=PROMPTS,
        guidance_scales=[1.0, 2.0],
        weights=[0.0, 1.0],
        num_samples=3,
        max_new_tokens=6,
    )
    result = run_sweep(settings)
    assert [p["label"] for p in result["points"]] == ["CFG 1", "CFG 2", "LERP w=0", "LERP w=1"]
    assert any(p["pareto_overall"] for p in result["points"])
    assert set(result["fronts"]) == {"cfg", "merge"}
    assert all(front["hypervolume"] >= 0 for front in result["fronts"].values())
    out = tmp_path / "sweep"
    assert (out / "sweep.png").stat().st_size > 10_000 and "Hypervolume" in (out / "sweep.md").read_text()

    # One more merge weight: only that point is generated again.
    import trl_diversity.toolkit.sweep as sweep_module

    generated = []
    real = sweep_module.generate_records
    monkeypatch.setattr(
        sweep_module, "generate_records", lambda *a, **k: generated.append(k["label"]) or real(*a, **k)
    )
    settings.weights = [0.0, 0.5, 1.0]
    result = run_sweep(settings)
    assert generated == ["LERP w=0.5"]
    assert len(result["points"]) == 5


def test_evaluate_can_generate_first(tiny_checkpoint, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    cli.main(
        [
            "evaluate",
            "--model",
            tiny_checkpoint,
            "--guidance_scale",
            "2",
            "--prompts",
            str(prompts),
            "--num_samples",
            "2",
            "--max_new_tokens",
            "5",
            "--fluency_model",
            "none",
            "--save_generations",
            str(tmp_path / "gens.jsonl"),
            "--chat_template_kwargs",
            '{"enable_thinking": false}',
            "--output",
            str(tmp_path / "eval.json"),
        ]
    )
    summary = json.loads((tmp_path / "eval.json").read_text())
    (entry,) = summary.values()
    assert entry["forward_passes_per_token"] == 2 and entry["num_prompts"] == 2
    assert "fluency_nll" not in entry["metrics"]
    assert len(read_jsonl(tmp_path / "gens.jsonl")) == 4
    assert entry["generation"]["sampling"]["chat_template_kwargs"] == {"enable_thinking": False}


def test_atomic_writes_have_the_usual_permissions(tmp_path):
    from trl_diversity.atomic import write_text_atomic

    path = write_text_atomic(tmp_path / "results.json", "{}")
    assert path.read_text() == "{}"
    assert path.stat().st_mode & 0o044  # readable by others, unlike mkstemp's 0600
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_plot_legend_counts_the_passes_of_each_point():
    from trl_diversity.toolkit.plotting import cost_label

    cfg = [{"label": f"CFG {g:g}", "forward_passes_per_token": 1 if g == 1 else 2} for g in (1.0, 1.5, 3.0)]
    assert cost_label(cfg) == "2 passes / token, 1 at CFG 1"  # scale 1 is plain sampling: one pass
    assert cost_label([{"label": "LERP w=0", "forward_passes_per_token": 1}]) == "1 pass / token"
