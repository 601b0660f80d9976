"""The group-reward guide's examples run as written (on a tiny model standing in for the default one)."""

import re
from pathlib import Path

from documentation import GUIDE

README = GUIDE / "group_rewards.md"


def group_reward_examples() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_the_readme_group_reward_examples_run(tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setattr("trl_diversity.defaults.default_model_path", lambda: Path(tiny_checkpoint))
    monkeypatch.chdir(tmp_path)
    examples = group_reward_examples()
    assert len(examples) == 4  # the reward, then its three uses
    namespace = {}
    trainers = []
    for code in examples:
        exec(compile(code, str(README), "exec"), namespace)
        if "trainer" in namespace and namespace["trainer"] not in trainers:
            trainers.append(namespace["trainer"])
    diversity_term, quality, plain = trainers
    assert diversity_term.args.diversity_reward == "lexical"
    assert any("diversity/reward/mean" in entry for entry in diversity_term.state.log_history)
    for trainer in (quality, plain):
        assert any("rewards/rank_by_length/mean" in entry for entry in trainer.state.log_history)
    ranks = namespace["rank_by_length"](prompt="p", completions=["a", "abc", "ab"])
    assert ranks == [0.0, 1.0, 0.5]
