"""The documentation holds together: every page is reachable from the README, every link resolves, and every field
of the configs is documented."""

import re
from pathlib import Path

import pytest
from documentation import README, ROOT

from trl_diversity import DiversityCFGConfig, DiversityCFGRLOOConfig
from trl_diversity.trainer.diversity_cfg_config import FIELD_GROUPS, method_field_names

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
# The user guide and the reports, and the guides of the folders beside the package.
DOCS = sorted((ROOT / "docs").rglob("*.md")) + [
    ROOT / name / "README.md" for name in ("benchmarks", "experiments", "recipes")
]


def links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL)  # code blocks hold no links
    return [target for target in LINK.findall(text) if not re.match(r"[a-z]+:", target)]


def anchors(page: Path) -> set[str]:
    headings = re.findall(r"^#+ (.+)$", page.read_text(), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


@pytest.mark.parametrize("page", [README, *DOCS], ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    for target in links(page):
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        assert resolved.exists(), f"{page.relative_to(ROOT)} links to {target}, which does not exist"
        if anchor and resolved.suffix == ".md":
            assert anchor in anchors(resolved), f"{page.relative_to(ROOT)} links to a missing heading: {target}"


def test_every_page_of_docs_is_reachable_from_the_readme():
    seen, frontier = set(), [README.resolve()]
    while frontier:
        page = frontier.pop()
        if page in seen or page.suffix != ".md":
            continue
        seen.add(page)
        frontier += [(page.parent / t.partition("#")[0]).resolve() for t in links(page) if t.partition("#")[0]]
    unreachable = [str(p.relative_to(ROOT)) for p in DOCS if p.resolve() not in seen]
    assert not unreachable, f"pages no link leads to from the README: {unreachable}"


def test_the_readme_reads_in_five_minutes():
    assert len(README.read_text().splitlines()) <= 220


@pytest.mark.parametrize("config", [DiversityCFGConfig, DiversityCFGRLOOConfig])
def test_every_method_field_is_documented_in_the_config_docstring(config):
    grouped = [name for names in FIELD_GROUPS.values() for name in names]
    assert sorted(grouped) == sorted(method_field_names())  # each field in exactly one group
    for name in method_field_names():
        assert re.search(rf"^\s+{name} \(`", config.__doc__, flags=re.M), f"{name} missing from {config.__name__}"
    for title in FIELD_GROUPS:
        assert f"> {title}" in config.__doc__


@pytest.mark.parametrize("trainer", ["DiversityCFGTrainer", "DiversityCFGRLOOTrainer"])
def test_each_trainer_documents_every_argument_and_an_example_that_compiles(trainer):
    import inspect

    import trl_diversity

    cls = getattr(trl_diversity, trainer)
    doc = inspect.getdoc(cls)
    args = doc.split("Args:", 1)[1]
    parameters = [name for name in inspect.signature(cls.__init__).parameters if name != "self"]
    for name in parameters:
        assert re.search(rf"\b{name}\b", args), f"{trainer}'s Args: does not name {name}"
    example = re.search(r"Example:\s+```python\n(.*?)```", doc, flags=re.DOTALL).group(1)
    compile(example, f"{trainer} example", "exec")
    # what the example imports exists (running it would train a model)
    for line in example.splitlines():
        if line.startswith(("from ", "import ")):
            exec(line, {})
    assert f"{trainer}(" in example
