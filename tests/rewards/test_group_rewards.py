"""The group-reward mechanism: whole groups whatever the process layout, each scored once, clear errors.

Several processes are simulated by threads that share an all-gather (the same contract as accelerate's
`gather_object`: every process's list, concatenated in rank order); the real 2-process runs are in
test_distributed.py.
"""

import asyncio
import math
import re
import sys

import pytest
from toy_group_rewards import SimulatedProcesses

from trl_diversity.rewards import GroupRewardError, as_reward_function, batched_group_reward, score_groups
from trl_diversity.rewards.group import Processes, group_shares
from trl_diversity.rewards.registry import resolve_group_reward


def one_process() -> Processes:
    return Processes(0, 1, lambda items: list(items))


def split(values, count):
    size = len(values) // count
    return [values[i * size : (i + 1) * size] for i in range(count)]


# A user group reward: rank the completions of a prompt by length (longest gets 1, shortest 0), and record the calls.
calls = []


def rank_by_length(prompt, completions, **kwargs):
    calls.append(prompt)
    order = sorted(range(len(completions)), key=lambda i: (len(completions[i]), i))
    ranks = [0.0] * len(completions)
    for rank, index in enumerate(order):
        ranks[index] = rank / (len(completions) - 1)
    return ranks


PROMPTS = [f"prompt {g}" for g in range(3) for _ in range(4)]  # 3 groups of k = 4
COMPLETIONS = ["a", "bbb", "cc", "dddd", "xx", "y", "zzzz", "www", "p", "qq", "rrr", "ssss"]


def test_group_shares_cover_every_group_once():
    for groups in range(0, 9):
        for processes in range(1, 5):
            shares = group_shares(groups, processes)
            assert len(shares) == processes
            assert [g for share in shares for g in share] == list(range(groups))


def test_one_process_scores_each_group_with_its_own_completions():
    calls.clear()
    rewards = score_groups(rank_by_length, PROMPTS, COMPLETIONS, 4, processes=one_process())
    assert calls == ["prompt 0", "prompt 1", "prompt 2"]
    expected = [rank_by_length(PROMPTS[g * 4], COMPLETIONS[g * 4 : g * 4 + 4]) for g in range(3)]
    assert rewards == [r for group in expected for r in group]


@pytest.mark.parametrize("count", [2, 3, 4])
def test_processes_get_the_one_process_rewards_and_each_group_is_scored_once(count):
    # 12 completions over 2, 3 or 4 processes: with 3 and 4, groups of 4 span processes (3 or 2 rows each).
    calls.clear()
    single = score_groups(rank_by_length, PROMPTS, COMPLETIONS, 4, processes=one_process())
    calls.clear()
    prompt_parts, completion_parts = split(PROMPTS, count), split(COMPLETIONS, count)
    outcomes = SimulatedProcesses(count).run(
        lambda p: score_groups(rank_by_length, prompt_parts[p.index], completion_parts[p.index], 4, processes=p)
    )
    assert [status for status, _ in outcomes] == ["ok"] * count
    assert all(rewards == single for _, rewards in outcomes)  # every process gets the whole batch's rewards
    assert sorted(calls) == ["prompt 0", "prompt 1", "prompt 2"]  # each group once in total, not once per process


def test_columns_and_trainer_state_reach_the_reward_per_group():
    seen = []

    def reward(prompt, completions, answer, completion_ids, trainer_state, **kwargs):
        seen.append((prompt, answer, completion_ids, trainer_state))
        return [float(c == a) for c, a in zip(completions, answer)]

    answers = [f"answer {g}" for g in range(2) for _ in range(2)]
    ids = [[i] for i in range(4)]
    rewards = score_groups(
        reward,
        ["p0", "p0", "p1", "p1"],
        ["answer 0", "no", "no", "answer 1"],
        2,
        {"answer": answers, "completion_ids": ids},
        extra={"trainer_state": "STATE"},
        processes=one_process(),
    )
    assert rewards == [1.0, 0.0, 0.0, 1.0]
    assert seen == [("p0", answers[:2], ids[:2], "STATE"), ("p1", answers[2:], ids[2:], "STATE")]


def test_a_batched_reward_gets_lists_of_groups_and_matches_the_unbatched_one():
    received = []

    @batched_group_reward
    def batched(prompts, completions, **kwargs):
        received.append(prompts)
        return [rank_by_length(p, c) for p, c in zip(prompts, completions)]

    unbatched = score_groups(rank_by_length, PROMPTS, COMPLETIONS, 4, processes=one_process())
    outcomes = SimulatedProcesses(2).run(
        lambda p: score_groups(batched, split(PROMPTS, 2)[p.index], split(COMPLETIONS, 2)[p.index], 4, processes=p)
    )
    assert all(rewards == unbatched for _, rewards in outcomes)
    assert sorted(received) == [["prompt 0"], ["prompt 1", "prompt 2"]]  # one call per process, disjoint groups


def test_an_async_batched_reward_is_awaited_before_its_length_is_checked():
    @batched_group_reward
    async def judge(prompts, completions, **kwargs):
        await asyncio.sleep(0)
        return [rank_by_length(p, c) for p, c in zip(prompts, completions)]

    expected = score_groups(rank_by_length, PROMPTS, COMPLETIONS, 4, processes=one_process())
    assert score_groups(judge, PROMPTS, COMPLETIONS, 4, processes=one_process()) == expected


def test_an_async_batched_reward_that_raises_is_named():
    @batched_group_reward
    async def judge(prompts, completions, **kwargs):
        raise TimeoutError("the API did not answer")

    with pytest.raises(GroupRewardError, match="'judge' raised TimeoutError"):
        score_groups(judge, PROMPTS, COMPLETIONS, 4, processes=one_process())


def test_an_async_batched_reward_returning_too_few_groups_is_named():
    @batched_group_reward
    async def judge(prompts, completions, **kwargs):
        return [[0.0] * 4]

    with pytest.raises(GroupRewardError, match="'judge' returned 1 values for 3 prompts"):
        score_groups(judge, PROMPTS, COMPLETIONS, 4, processes=one_process())


def three_values(prompt, completions, **kwargs):
    return [0.0, 1.0, 2.0]


def nan_for_prompt_2(prompt, completions, **kwargs):
    return [math.nan if prompt == "prompt 2" else 0.0] * len(completions)


def none_values(prompt, completions, **kwargs):
    return [None] * len(completions)


def raises_on_prompt_1(prompt, completions, **kwargs):
    if prompt == "prompt 1":
        raise ZeroDivisionError("division by zero")
    return [0.0] * len(completions)


@pytest.mark.parametrize(
    "reward, message",
    [
        (
            three_values,
            r"'three_values' returned 3 values for the 4 completions of prompt 0 of the batch \('prompt 0'\)",
        ),
        (nan_for_prompt_2, r"'nan_for_prompt_2' returned nan for completion 0 of prompt 2 .* finite number"),
        (none_values, r"'none_values' returned None for completion 0 of prompt 0"),
        (raises_on_prompt_1, r"'raises_on_prompt_1' raised ZeroDivisionError on prompt 1 of the batch"),
    ],
)
def test_bad_group_rewards_fail_on_every_process_with_the_function_and_prompt(reward, message):
    outcomes = SimulatedProcesses(2).run(
        lambda p: score_groups(reward, split(PROMPTS, 2)[p.index], split(COMPLETIONS, 2)[p.index], 4, processes=p)
    )
    for status, error in outcomes:  # no process is left waiting for the other: both raise the same error
        assert status == "error" and isinstance(error, GroupRewardError), error
        assert error.args[0] == outcomes[0][1].args[0]
        assert re.search(message, str(error)), str(error)


def test_a_batched_reward_returning_too_few_groups_is_named():
    @batched_group_reward
    def judge(prompts, completions, **kwargs):
        return [[0.0] * 4]

    with pytest.raises(GroupRewardError, match="'judge' returned 1 values for 3 prompts"):
        score_groups(judge, PROMPTS, COMPLETIONS, 4, processes=one_process())


def test_a_batch_that_does_not_split_into_groups_is_an_error():
    with pytest.raises(GroupRewardError, match="12 completions cannot be split into groups of num_generations=5"):
        score_groups(rank_by_length, PROMPTS, COMPLETIONS, 5, processes=one_process())


def test_the_wrapper_returns_this_process_slice_and_passes_none_through():
    wrapped = as_reward_function(rank_by_length, num_generations=4)
    assert wrapped.__name__ == "rank_by_length"  # the name GRPO logs it under
    expected = score_groups(rank_by_length, PROMPTS, COMPLETIONS, 4, processes=one_process())
    trainer_kwargs = {"trainer_state": None, "log_extra": print, "log_metric": print}  # per-process, not gathered
    assert wrapped(prompts=PROMPTS, completions=COMPLETIONS, completion_ids=[[1]] * 12, **trainer_kwargs) == expected
    maybe = as_reward_function(none_values, num_generations=4)
    assert maybe(prompts=PROMPTS, completions=COMPLETIONS) == [None] * 12  # "not applicable", as TRL allows


def test_the_wrapper_refuses_groups_that_mix_prompts():
    wrapped = as_reward_function(rank_by_length, num_generations=2)
    with pytest.raises(GroupRewardError, match="rows 2 to 3 of the batch hold different prompts"):
        wrapped(prompts=["a", "a", "a", "b"], completions=["x"] * 4)


def test_user_group_rewards_resolve_by_module_path(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(
        "from trl_diversity.rewards import PartitionDiversity\n"
        "def distinct(prompt, completions, **kwargs):\n"
        "    return [float(completions.count(c) == 1) for c in completions]\n"
        "EXACT = PartitionDiversity(equivalent=lambda a, b: a == b)\n"
        "class Judge:\n"
        "    pass\n"
        "LIMIT = 3\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_rewards", raising=False)
    assert resolve_group_reward("my_rewards:distinct").__name__ == "distinct"
    assert resolve_group_reward("my_rewards:EXACT").dissimilarities(["a", "a", "b"])[0] == [0.0, 0.0, 1.0]
    with pytest.raises(ValueError, match="cannot import module 'no_such_module'"):
        resolve_group_reward("no_such_module:reward")
    with pytest.raises(ValueError, match="module 'my_rewards' has no attribute 'missing'"):
        resolve_group_reward("my_rewards:missing")
    with pytest.raises(ValueError, match="is a class. Point to a function, or to an instance"):
        resolve_group_reward("my_rewards:Judge")
    with pytest.raises(ValueError, match="is a int, not a callable group reward"):
        resolve_group_reward("my_rewards:LIMIT")


@pytest.mark.parametrize("name", ["cosine", "my_rewards.distinct", "a:b:c", ""])
def test_unknown_diversity_reward_names_fail_in_the_config(tmp_path, name):
    from trl_diversity import DiversityCFGConfig

    with pytest.raises(ValueError, match="Unknown diversity_reward .*embedding, lexical, partition.*module:function"):
        DiversityCFGConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, diversity_reward=name)
