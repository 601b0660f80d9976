"""Group rewards by name, as the config and the command line select them (`diversity_reward`).

- `embedding`, `lexical`, `partition`: the built-in measures (`measures.py`);
- `module:attribute`: any group reward importable from your code, e.g. `my_rewards:distinct_answers` or
  `my_rewards:JUDGE` for a configured callable object (`PartitionDiversity(equivalent=my_test)` plugs in another
  equivalence test this way).
"""

from __future__ import annotations

from trl_diversity.errors import UserError, did_you_mean
from trl_diversity.importing import IMPORT_PATH, import_callable

BUILTIN_GROUP_REWARDS = ("embedding", "lexical", "partition")


def check_group_reward_name(spec: str, field: str = "diversity_reward") -> None:
    """Reject a malformed name without importing anything (configs are checked before any model loads)."""
    if spec in BUILTIN_GROUP_REWARDS or (isinstance(spec, str) and IMPORT_PATH.match(spec)):
        return
    suggestion = did_you_mean(spec, BUILTIN_GROUP_REWARDS) if isinstance(spec, str) else ""
    raise UserError(
        f"Unknown {field} {spec!r}{suggestion or '.'} Choose a built-in ({', '.join(BUILTIN_GROUP_REWARDS)}) or give "
        "your own group reward as 'module:function' (importable from the working directory or the Python path)."
    )


def resolve_group_reward(spec: str, embedder: str | None = None, device=None, field: str = "diversity_reward"):
    """The group reward a name stands for; `embedder` (a sentence-transformers name or path) is loaded only for
    `embedding`."""
    check_group_reward_name(spec, field)
    if spec == "embedding":
        from trl_diversity.rewards.measures import EmbeddingDiversity

        return EmbeddingDiversity(embedder, device=device)
    if spec == "lexical":
        from trl_diversity.rewards.measures import LexicalDiversity

        return LexicalDiversity()
    if spec == "partition":
        from trl_diversity.rewards.measures import PartitionDiversity

        return PartitionDiversity()
    return _import_group_reward(spec, field)


def _import_group_reward(spec: str, field: str):
    return import_callable(spec, field, "group reward")
