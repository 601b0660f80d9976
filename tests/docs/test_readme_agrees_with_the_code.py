"""The README agrees with the code: its before/after table has the rows `train` prints, and its Python example saves
the model it trains (tests/trainer/test_python_api.py runs that example)."""

import re
from pathlib import Path

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_the_quickstart_table_uses_the_row_labels_train_prints():
    from trl_diversity.toolkit import report

    source = Path(report.__file__).read_text()
    printed = set(re.findall(r'self\._measure\(f?"([^"{]+)', source))  # "base", "base + CFG ", "finetuned"
    table = README.split("before/after table", 1)[1].split("\n\n", 2)[1]
    rows = [line.split("|")[1].strip() for line in table.splitlines()[2:]]
    assert rows == ["base", "base + CFG 3", "finetuned"]
    assert {"base", "finetuned"} <= printed and any(label.startswith("base + CFG") for label in printed)


def test_the_python_example_saves_the_model():
    section = README.split("## Use the trainer in your own code", 1)[1]
    example = re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)
    assert "trainer.save_model()" in example
