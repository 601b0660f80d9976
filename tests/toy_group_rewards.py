"""Group rewards that tests select by `module:function` (`diversity_reward="toy_group_rewards:rank_by_length"`)."""

from trl_diversity.rewards.text import completion_text

CALLS = []  # the prompt of every group this process scored with rank_by_length
GROUPS = []  # (prompt, completions) of every group this process scored with rank_by_length


def rank_by_length(prompt, completions, **kwargs):
    """A toy groupwise ranking: the longest completion of the group gets 1, the shortest 0 (ties by position)."""
    CALLS.append(completion_text(prompt))
    GROUPS.append((completion_text(prompt), [completion_text(c) for c in completions]))
    lengths = [len(completion_text(c)) for c in completions]
    order = sorted(range(len(completions)), key=lambda i: (lengths[i], i))
    ranks = [0.0] * len(completions)
    for rank, index in enumerate(order):
        ranks[index] = rank / (len(completions) - 1)
    return ranks


def one_reward_short(prompt, completions, **kwargs):
    return [0.0] * (len(completions) - 1)


def not_finite(prompt, completions, **kwargs):
    return [float("inf")] * len(completions)


def broken(prompt, completions, **kwargs):
    raise KeyError("score")
