"""Group rewards that tests select by `module:function` (`diversity_reward="toy_group_rewards:rank_by_length"`), and
several processes simulated by threads, for the group-reward mechanism's tests."""

import threading

from trl_diversity.rewards.group import Processes
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


class SimulatedProcesses:
    """`count` processes as threads, with an all-gather of Python lists through a barrier."""

    def __init__(self, count: int):
        self.count = count
        self.barrier = threading.Barrier(count, timeout=20)  # a process left waiting fails the test, not hangs it
        self.slots = [None] * count

    def processes(self, index: int) -> Processes:
        def gather(items):
            self.slots[index] = list(items)
            self.barrier.wait()
            gathered = [item for slot in self.slots for item in slot]
            self.barrier.wait()  # everyone has read before a later gather overwrites the slots
            return gathered

        return Processes(index, self.count, gather)

    def run(self, function):
        """`function(processes)` on every simulated process; its return value or exception, per process."""
        outcomes = [None] * self.count

        def target(index):
            try:
                outcomes[index] = ("ok", function(self.processes(index)))
            except Exception as error:
                outcomes[index] = ("error", error)

        threads = [threading.Thread(target=target, args=(index,)) for index in range(self.count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert not any(thread.is_alive() for thread in threads), "a process is stuck"
        return outcomes
