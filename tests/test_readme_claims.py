"""The README says what is true: its claims are checked against what the code does (issue 17, section 3)."""

import re
from pathlib import Path

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_the_intro_says_plainly_that_nothing_has_run_on_a_gpu():
    intro = README.split("## Quickstart", 1)[0]
    assert "work as they do with GRPO" not in intro
    assert "Nothing has run on a GPU yet" in intro
    # vLLM has run, but only in colocate mode on a CPU (tests/test_vllm_colocate.py, in CI): the intro says so.
    assert "colocate mode on a\nCPU" in intro or "colocate mode on a CPU" in intro


def test_the_quickstart_table_uses_the_row_labels_train_prints():
    from trl_diversity.toolkit import report

    source = Path(report.__file__).read_text()
    printed = set(re.findall(r'self\._measure\(f?"([^"{]+)', source))  # "base", "base + CFG ", "finetuned"
    table = README.split("before/after table", 1)[1].split("\n\n", 2)[1]
    rows = [line.split("|")[1].strip() for line in table.splitlines()[2:]]
    assert rows == ["base", "base + CFG 3", "finetuned"]
    assert {"base", "finetuned"} <= printed and any(label.startswith("base + CFG") for label in printed)


def test_the_default_jobs_time_says_it_is_for_a_quiet_machine():
    assert "quiet 2-core CPU, nothing else" in README and "busy machine" in README


def test_the_python_example_saves_the_model():
    section = README.split("## Use the trainer in your own code", 1)[1]
    example = re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)
    assert "trainer.save_model()" in example
