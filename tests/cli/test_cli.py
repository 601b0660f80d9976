import json

import pytest
from tiny_training import tiny_train_argv

from trl_diversity import cli
from trl_diversity.errors import UserError


def test_train_runs_the_default_job_shape_on_a_tiny_model(tiny_checkpoint, tmp_path, capsys, monkeypatch):
    import trl_diversity.cli.train as train_command
    from trl_diversity.toolkit.report import BeforeAfterReport

    # Every rank ends the process group after its last collective and before the report that only rank 0 writes.
    calls = []
    end, measure = train_command.end_distributed_run, BeforeAfterReport.measure_finetuned
    monkeypatch.setattr(train_command, "end_distributed_run", lambda a: calls.append("end") or end(a))
    monkeypatch.setattr(BeforeAfterReport, "measure_finetuned", lambda *a: calls.append("report") or measure(*a))
    out = tmp_path / "run"
    flags = ["--max_steps", "2", "--save_steps", "1", "--report_prompts", "2", "--report_samples", "2"]
    cli.main(["train", *tiny_train_argv(tiny_checkpoint, out, *flags)])
    assert (out / "adapter_config.json").is_file()  # the default job trains a LoRA adapter
    assert (out / "checkpoint-2").is_dir()
    assert calls == ["end", "report"]
    rows = json.loads((out / "before_after.json").read_text())
    assert [row["model"] for row in rows] == ["base", "base + CFG 3", "finetuned"]
    assert all(0 <= row["pairwise_diversity"] <= 2 for row in rows)
    assert [row["forward_passes_per_token"] for row in rows] == [1, 2, 1]
    # No wall-clock column: on a few prompts it measures the machine's load more than the model.
    assert all("generation_seconds" not in row for row in rows)
    assert "time" not in (out / "before_after.md").read_text()
    assert "| finetuned |" in capsys.readouterr().out
    card = (out / "README.md").read_text()
    assert "[None]" not in card and f"fine-tuned version of the local model `{tiny_checkpoint}`" in card


def test_train_overwrites_an_earlier_run_only_when_asked(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "run"
    (out / "checkpoint-99").mkdir(parents=True)  # a longer earlier run: `resume true` would pick this one
    (out / "before_after.md").write_text("| stale |\n")
    argv = ["train", *tiny_train_argv(tiny_checkpoint, out, "--save_steps", "1", "--max_completion_length", "4")]
    with pytest.raises(SystemExit) as refused:
        cli.main(argv)
    assert refused.value.code == 2 and "already holds files" in capsys.readouterr().err

    cli.main([*argv, "--overwrite_output_dir"])
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1"]
    assert not (out / "before_after.md").exists()  # the old run's table would describe another model
    assert "deleted before_after.md, checkpoint-99" in capsys.readouterr().out


def test_recipe_values_are_overridden_by_flags_and_unknown_keys_rejected(tiny_checkpoint, tmp_path):
    from trl_diversity.cli.train import parse

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"model_name_or_path: {tiny_checkpoint}\nguidance_scale: 2.0\ndiversity_coef: 5.0\n")
    script_args, config, model_args = parse([str(recipe), "--diversity_coef", "7"])
    assert (config.guidance_scale, config.diversity_coef) == (2.0, 7.0)
    assert model_args.model_name_or_path == tiny_checkpoint

    recipe.write_text("guidance_scale: 2.0\nguidance_scael: 3.0\n")
    with pytest.raises(UserError, match="unknown key `guidance_scael`; did you mean `guidance_scale`"):
        parse([str(recipe)])


def test_command_line_help_lists_the_commands(capsys):
    cli.main([])
    assert "dial" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["trian"])
    assert exit_info.value.code == 2 and "unknown command 'trian'" in capsys.readouterr().err
