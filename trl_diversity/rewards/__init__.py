"""Group-level rewards: rewards that score the `k` completions of a prompt together, correct across processes.

- `group.py`: the protocol (one prompt and its `k` completions -> `k` floats, optionally batched over groups) and
  `score_groups`, which gathers a generation batch from every process and scores each group exactly once;
- `reward_function.py`: `as_reward_function`, a group reward as an ordinary reward function for `trl.GRPOTrainer`;
- `measures.py`: the built-in diversity measures (`embedding`, `lexical`, `partition`), `registry.py` their names;
- `baselines.py`: the diversity term's baselines (the pairs among the others, or the other rewards' mean) and its
  advantage `r_i - b_i`;
- `diversity.py`, `embedder.py`, `partition.py`, `text.py`: the pairwise math, the sentence embedder, the
  equivalence test shared with evaluation, the text of a completion.

Importing this package does not import sentence-transformers (only `embedding` needs it, when it is built).
"""

from trl_diversity.rewards.baselines import group_advantages, other_rewards_baselines
from trl_diversity.rewards.group import GroupRewardError, batched_group_reward, score_groups
from trl_diversity.rewards.measures import EmbeddingDiversity, LexicalDiversity, PartitionDiversity
from trl_diversity.rewards.registry import BUILTIN_GROUP_REWARDS, resolve_group_reward
from trl_diversity.rewards.reward_function import GroupRewardFunction, as_reward_function

__all__ = [
    "BUILTIN_GROUP_REWARDS",
    "EmbeddingDiversity",
    "GroupRewardError",
    "GroupRewardFunction",
    "LexicalDiversity",
    "PartitionDiversity",
    "as_reward_function",
    "batched_group_reward",
    "group_advantages",
    "resolve_group_reward",
    "other_rewards_baselines",
    "score_groups",
]
