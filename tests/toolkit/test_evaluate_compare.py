"""`evaluate` refuses to compare generations made on other prompts or with another number of samples per prompt
unless asked to keep what they share, and labels tokens / s as load-dependent."""

import json
from pathlib import Path

import pytest

from trl_diversity import cli
from trl_diversity.data import load_prompts
from trl_diversity.errors import UserError
from trl_diversity.toolkit.generation import write_jsonl

PROMPTS = list(load_prompts("eval", limit=3)["prompt"])


def _fake_generations(path, label, num_prompts, k):
    words = "sea town morning quiet poem light river stone wind bread".split()
    records = [
        {
            "model": label,
            "prompt": PROMPTS[p],
            "prompt_index": p,
            "sample": s,
            "completion": " ".join(words[(p + s + i) % len(words)] for i in range(s + 2)),
            "completion_ids": [5 + s, 6 + p],
            "seconds": 0.01,
        }
        for p in range(num_prompts)
        for s in range(k)
    ]
    write_jsonl(records, path)
    return str(path)


def test_evaluate_refuses_other_prompts_or_k_unless_asked(tmp_path, capsys):
    a = _fake_generations(tmp_path / "a.jsonl", "a", num_prompts=3, k=4)
    b = _fake_generations(tmp_path / "b.jsonl", "b", num_prompts=2, k=3)
    command = ["evaluate", a, b, "--fluency_model", "none", "--output", str(tmp_path / "eval.json")]
    message = _refusal(capsys, command)
    assert "different prompts ('a' 3, 'b' 2; 2 shared)" in message and "--shared_prompts_only" in message
    message = _refusal(capsys, [*command, "--shared_prompts_only"])
    assert "samples per prompt (k: 'a' 4, 'b' 3)" in message and "--truncate_k" in message

    cli.main([*command, "--shared_prompts_only", "--truncate_k"])
    summary = json.loads((tmp_path / "eval.json").read_text())
    assert {(e["num_prompts"], e["samples_per_prompt"]) for e in summary.values()} == {(2, 3)}
    # the partition count of the first 3 samples of the first 2 prompts: at most 3, as for b
    assert summary["a"]["metrics"]["partitions"]["mean"] <= 3
    table = (tmp_path / "eval.md").read_text()
    assert "tokens / s (load-dependent)" in table and "compare it only between models sampled side by side" in table


def _refusal(capsys, argv) -> str:
    """The one-line message of a command that exits with status 2."""
    with pytest.raises(SystemExit) as refused:
        cli.main(argv)
    message = capsys.readouterr().err
    assert refused.value.code == 2 and message.count("\n") == 1, message
    return message


def test_align_records_refuses_other_k_in_python_too(tmp_path):
    from trl_diversity.toolkit.evaluation import align_records
    from trl_diversity.toolkit.generation import read_jsonl

    a = read_jsonl(_fake_generations(tmp_path / "a.jsonl", "a", num_prompts=3, k=4))
    b = read_jsonl(_fake_generations(tmp_path / "b.jsonl", "b", num_prompts=3, k=3))
    with pytest.raises(UserError, match="--truncate_k"):
        align_records(a + b)
    assert len(align_records(a + b, truncate_k=True)) == 2 * 3 * 3
    aligned = align_records(list(reversed(a)))  # one model: its prompts in first-seen order, each group in order
    assert [(r["prompt_index"], r["sample"]) for r in aligned] == [(p, s) for p in (2, 1, 0) for s in range(4)]


def test_a_file_cut_short_is_a_one_line_error(tmp_path, capsys):
    path = tmp_path / "cut.jsonl.partial"
    path.write_text(Path(_fake_generations(tmp_path / "a.jsonl", "a", 2, 2)).read_text() + '{"model": "a", "pro')
    message = _refusal(
        capsys, ["evaluate", str(path), "--fluency_model", "none", "--output", str(tmp_path / "e.json")]
    )
    assert "line 5, is not JSON" in message


def test_files_of_one_model_are_a_row_each_never_pooled(tmp_path, capsys):
    """Seed 0, seed 1 and temperature 0.7 files of one model (one label, `default`) used to become a single row with
    their samples pooled (12 per prompt); each file is now a row of its own, named after the file."""
    paths = [
        _fake_generations(tmp_path / f"{name}.jsonl", "default", num_prompts=3, k=4)
        for name in ("seed0", "seed1", "t0.7")
    ]
    other = _fake_generations(tmp_path / "other.jsonl", "other", num_prompts=3, k=4)
    cli.main(["evaluate", *paths, other, "--no_fluency", "--output", str(tmp_path / "eval.json")])
    summary = json.loads((tmp_path / "eval.json").read_text())
    assert list(summary) == ["default (seed0.jsonl)", "default (seed1.jsonl)", "default (t0.7.jsonl)", "other"]
    assert {entry["samples_per_prompt"] for entry in summary.values()} == {4}
    assert all(entry["metrics"]["partitions"]["mean"] <= 4 for entry in summary.values())
    assert "fluency_nll" not in summary["other"]["metrics"]  # --no_fluency, as in sweep and dial


def test_a_file_given_twice_is_refused_in_one_line(tmp_path, capsys, monkeypatch):
    path = _fake_generations(tmp_path / "a.jsonl", "a", num_prompts=2, k=2)
    monkeypatch.chdir(tmp_path)
    message = _refusal(capsys, ["evaluate", path, "a.jsonl", "--no_fluency", "--output", str(tmp_path / "e.json")])
    assert "generations file a.jsonl is given twice" in message and "pass each file once" in message


def test_no_fluency_with_a_fluency_model_is_refused(tmp_path, capsys):
    path = _fake_generations(tmp_path / "a.jsonl", "a", num_prompts=2, k=2)
    argv = ["evaluate", path, "--no_fluency", "--fluency_model", "gpt2", "--output", str(tmp_path / "e.json")]
    assert "--no_fluency" in _refusal(capsys, argv)
