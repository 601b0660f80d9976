"""User errors through the real console script: one line on stderr naming the problem and the fix, exit status 2,
no traceback, no usage dump; and the check comes before torch (paths) or before any model (everything else)."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SCRIPT = Path(sys.executable).parent / "trl-diversity"
pytestmark = pytest.mark.skipif(not SCRIPT.is_file(), reason="the trl-diversity console script is not installed")


def run(*args, cwd=None, **env):
    # A refused command ends in seconds; a timeout means it went on to train or generate instead.
    return subprocess.run(
        [str(SCRIPT), *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **env},
        timeout=120,
    )


def assert_user_error(result, *expected: str):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "usage:" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr  # progress bars or warnings before the message would be noise too
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def occupied(tmp_path):
    run_dir = tmp_path / "previous-run"
    (run_dir / "checkpoint-8").mkdir(parents=True)
    (run_dir / "before_after.md").write_text("| stale |\n")
    return run_dir


MISSING_MODEL_CASES = {
    "train": (["train", "--model_name_or_path", "/nonexistent/model"], "--model_name_or_path /nonexistent/model"),
    "generate": (["generate", "--model", "/nonexistent", "--output", "g.jsonl"], "--model /nonexistent"),
    "evaluate": (["evaluate", "--model", "/nonexistent", "--output", "e.json"], "--model /nonexistent"),
    "merge": (["merge", "/nonexistent/a", "/nonexistent/b", "--weight", "0.5", "--output", "m"], "/nonexistent/a"),
    "sweep": (
        ["sweep", "--quality_model", "/nonexistent/q", "--diversity_model", "/nonexistent/d", "--output", "s"],
        "--quality_model /nonexistent/q",
    ),
    "dial": (
        ["dial", "--quality_model", "/nonexistent/q", "--diversity_model", "/nonexistent/d"]
        + ["--target", "adherence=0.5", "--output", "d"],
        "--quality_model /nonexistent/q",
    ),
}


@pytest.mark.parametrize("command", list(MISSING_MODEL_CASES))
def test_a_missing_model_path_is_named_in_every_command(command, tmp_path):
    args, named = MISSING_MODEL_CASES[command]
    line = assert_user_error(run(*args, cwd=tmp_path), named, "does not exist")
    assert "`default`" in line  # the fix: what may be passed instead
    assert not any(tmp_path.iterdir())  # nothing was written


def test_a_mistyped_path_suggests_the_sibling_folder(tmp_path):
    (tmp_path / "outputs" / "quality").mkdir(parents=True)
    (tmp_path / "outputs" / "quality" / "config.json").write_text("{}")
    result = run("generate", "--model", "outputs/qualty", "--output", "g.jsonl", cwd=tmp_path)
    assert_user_error(result, "outputs/qualty does not exist", "did you mean outputs/quality?")


def test_a_mistyped_dataset_file_suggests_the_file_that_exists(tmp_path):
    (tmp_path / "good.jsonl").write_text('{"prompt": "Write a haiku."}\n')
    result = run("train", "--dataset_name", "good.json", "--output_dir", "out", cwd=tmp_path)
    assert_user_error(result, "--dataset_name good.json does not exist", "did you mean good.jsonl?")
    assert not (tmp_path / "out").exists()


def test_a_folder_that_is_not_a_model_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    assert_user_error(run("generate", "--model", tmp_path / "empty", "--output", "g.jsonl"), "holds no config.json")


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--diversity_coef", "-1"], ["diversity_coef must be a finite number >= 0, got -1.0"]),
        (["--num_generations", "1"], ["needs at least 2 samples per prompt", "num_generations >= 2"]),
        (["--distill_divergence", "revers_kl"], ["invalid choice: 'revers_kl'", "reverse_kl"]),
        (["--learning_rate", "fast"], ["--learning_rate", "invalid float value: 'fast'"]),
        (["--diversity_coef", "0", "--distill_coef", "0"], ["Nothing to train on", "--diversity_coef > 0"]),
        (["--guidance", "2*nul"], ["guidance '2*nul' cannot be read", "WEIGHT*NEGATIVE"]),
        (["--guidance", "2*null", "--guidance_scale", "2"], ["guidance or guidance_scale, not both"]),
    ],
)
def test_config_errors_are_one_line(args, expected, tmp_path):
    assert_user_error(run("train", "--output_dir", tmp_path / "out", *args), *expected)


@pytest.mark.parametrize(
    "typed, meant", [("--diversity_coeff", "--diversity_coef"), ("--max_step", "--max_steps"), ("--lr", None)]
)
def test_a_misspelt_flag_names_the_closest_field_without_the_usage(typed, meant, tmp_path):
    # `--max_step` is a prefix of `--max_steps`: argparse would silently accept it; we take no abbreviations.
    result = run("train", typed, "5", "--output_dir", tmp_path / "out")
    line = assert_user_error(result, f"unknown flag `{typed}`", "trl-diversity train --help")
    assert (f"did you mean `{meant}`?" in line) if meant else ("did you mean" not in line)


def test_a_misspelt_flag_is_reported_before_a_missing_required_one():
    assert_user_error(run("generate", "--modle", "x"), "unknown flag `--modle`", "did you mean `--model`?")


def test_an_unknown_recipe_key_names_the_closest_field(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("guidance_scale: 2.0\ndiversity_coeficient: 3.0\n")
    line = assert_user_error(run("train", recipe), "unknown key `diversity_coeficient`", "`diversity_coef`")
    assert "fail_with_unknown_args" not in line  # TRL's advice, meaningless on the command line
    assert_user_error(run("train", tmp_path / "recipe.yml"), "recipe.yml does not exist", "recipe.yaml")


def test_train_refuses_an_output_dir_that_holds_a_run(occupied):
    line = assert_user_error(run("train", "--output_dir", occupied), "already holds files", "checkpoint-8")
    assert "--overwrite_output_dir" in line and "--resume_from_checkpoint true" in line
    assert (occupied / "checkpoint-8").is_dir()


def test_resuming_needs_a_checkpoint(tmp_path):
    (tmp_path / "fresh").mkdir()
    result = run("train", "--output_dir", tmp_path / "fresh", "--resume_from_checkpoint", "true")
    assert_user_error(result, "holds no checkpoint-* folder to resume from")


def test_generate_refuses_an_invalid_guidance_in_one_line(tmp_path):
    result = run("generate", "--guidance", "1*layer:0", "--output", tmp_path / "g.jsonl")
    assert_user_error(result, "layer:0 reads out no layer")


def test_unknown_command_and_dial_target_suggest_the_closest():
    assert_user_error(run("trian"), "unknown command 'trian'", "did you mean `train`?")
    result = run("dial", "--quality_model", "a", "--diversity_model", "b", "--output", "o", "--target", "adherense=1")
    assert_user_error(result, "unknown metric 'adherense'", "did you mean `adherence`?")


def test_debug_shows_the_traceback():
    for result in (
        run("--debug", "generate", "--model", "/nonexistent", "--output", "g.jsonl"),
        run("generate", "--model", "/nonexistent", "--output", "g.jsonl", TRL_DIVERSITY_DEBUG="1"),
    ):
        assert result.returncode != 0
        assert "Traceback" in result.stderr and "UserError: --model /nonexistent does not exist" in result.stderr


CHECKED_BEFORE_TORCH = {
    "train path": ["train", "--model_name_or_path", "/nonexistent/model"],
    "train output_dir": ["train", "--output_dir", "{occupied}"],
    "generate": ["generate", "--model", "/nonexistent", "--output", "g.jsonl"],
    "merge": ["merge", "/nonexistent/a", "/nonexistent/b", "--weight", "2", "--output", "m"],
    "sweep": ["sweep", "--quality_model", "/nonexistent/q", "--diversity_model", "d", "--output", "s"],
    "dial": ["dial", "--target", "adherence=x", "--quality_model", "a", "--diversity_model", "b", "--output", "o"],
}


@pytest.mark.parametrize("case", list(CHECKED_BEFORE_TORCH))
def test_path_and_value_mistakes_are_reported_before_torch_is_imported(case, occupied):
    # Importing torch and transformers is most of the seconds a mistake used to cost; these checks need neither.
    argv = [arg.format(occupied=occupied) for arg in CHECKED_BEFORE_TORCH[case]]
    code = textwrap.dedent(
        f"""
        import sys
        from trl_diversity.cli import main
        try:
            main({argv!r})
        except SystemExit as exit:
            print(exit.code, "torch" in sys.modules)
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.split() == ["2", "False"], result.stderr


def test_train_help_shows_the_method_first_with_defaults():
    result = run("train", "--help")
    assert result.returncode == 0
    text = result.stdout
    groups = [line for line in text.splitlines() if line and not line[0].isspace() and line.endswith(":")]
    assert groups[0] == "options:" and groups[1].startswith("diversity-rewarded CFG distillation")
    method = text.index(groups[1])
    assert method < text.index("--diversity_coef") < text.index("--dataset_name") < text.index("--learning_rate")
    assert text.index("--max_nonfinite_steps") < text.index(groups[2])  # all 9 of the method's options together
    # Defaults are the default job's (the help is what `trl-diversity train` would run).
    learning_rate_help = text[text.index("--learning_rate") :].split("--", 3)[2]
    assert "(default: 0.0002)" in " ".join(learning_rate_help.split())


@pytest.mark.parametrize(
    "command, flag, default",
    [
        ("generate", "--num_samples", "4"),
        ("sweep", "--weights", "[0.0, 0.25, 0.5, 0.75, 1.0]"),
        ("dial", "--tolerance", "0.01"),
    ],
)
def test_subcommand_helps_show_defaults(command, flag, default):
    result = run(command, "--help")
    assert result.returncode == 0
    entry = " ".join(result.stdout[result.stdout.index(f"  {flag} ") :].split())  # the flag's help, unwrapped
    assert entry.split(" --", 1)[0].endswith(f"(default: {default})"), entry
