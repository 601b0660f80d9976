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
