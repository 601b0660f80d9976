"""What must hold in every configuration the trainers accept, checked on drawn configurations.

Each invariant is a `check_*` function of one drawn `Setup` (`invariant_configs.py`: model family, how the model is
given, LoRA, algorithm, beta, prompt lengths, teacher, loss type, batch schedule, truncated completions masked, the
guidance form, TRL's tools). Each runs twice:

- in the default suite, on a few fixed draws (`FEW`);
- under `pytest -m invariants` (which `.ci/run` runs too; marked slow, so not on the fast path), on a wider
  fixed draw (`WIDE`). Set
  `INVARIANTS_RANDOM=1` to draw new configurations each run instead; hypothesis prints a failing one.

The invariants:

1. Identity at guidance_scale=1, and for every guidance form at weight 0: the teacher is the initial policy, so at
   learning_rate=0 every logged divergence is 0 to float tolerance.
2. Method off is TRL: with distill_coef=0 and diversity_coef=0 the trainer logs and trains exactly as TRL's.
3. The teacher and the base never move: the teacher's guided hidden states are bit-identical before and after
   training, and a LoRA run leaves every base weight untouched.
4. What is logged is what is trained: the completions table's advantages and diversity rewards, and the logged
   coefficient, are the ones the loss used.
5. A group reward sees exactly the k completions of each prompt, whole, once (on one process here; on two in
   `test_group_reward_sees_whole_groups_on_simulated_processes`).
6. The diversity measures: permuting a group permutes its rewards; a duplicated completion never raises either
   copy's reward; a blank completion scores lowest.
7. Determinism: the same seed gives the same run on a CPU, bit for bit.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import threading
from pathlib import Path

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from invariant_configs import GUIDANCE_FORMS, Setup, build, logged, setups, snapshot
from tiny_training import TIMING, assert_same_run

from trl_diversity.guidance import parse_guidance
from trl_diversity.rewards import LexicalDiversity, PartitionDiversity
from trl_diversity.rewards.group import score_groups

RANDOM = os.environ.get("INVARIANTS_RANDOM") == "1"
_COMMON = dict(deadline=None, database=None, suppress_health_check=list(HealthCheck), derandomize=not RANDOM)
FEW = settings(max_examples=3, **_COMMON)
WIDE = settings(max_examples=25, **_COMMON)
TOLERANCE = 1e-5  # float32 rounding of two forwards of one model (a KL of 1e-5 nats is far below any real change)


def brevity(completions, **kwargs):
    return [-len(str(c)) / 100 for c in completions]


def in_folder(check):
    """Run `check(setup, folder)` in a fresh temporary folder (hypothesis cannot share pytest's tmp_path)."""

    def run(setup: Setup):
        with tempfile.TemporaryDirectory() as folder:
            check(setup, Path(folder) / "run")

    run.__name__ = check.__name__
    return run


# ---------------------------------------------------------------------------------------------------------------------
# 1. Identity at guidance_scale=1


def at_weight_zero(guidance: str) -> str:
    """The same guidance with every weight 0: the unguided model."""
    spec = parse_guidance(guidance)
    return str(type(spec)(tuple(dataclasses.replace(n, weight=0.0) for n in spec.negatives), spec.start))


@in_folder
def check_identity(setup: Setup, folder: Path):
    # The identity of every form: plain CFG at gamma = 1, and each guidance form with its weights set to 0.
    identity = {"guidance": at_weight_zero(setup.guidance)} if setup.guidance else {"guidance_scale": 1.0}
    trainer = build(setup, folder, learning_rate=0.0, diversity_reward="lexical", **identity)
    trainer.train()
    divergences = logged(trainer, "distill/divergence")
    assert divergences, setup.describe()
    assert max(divergences) < TOLERANCE, f"divergence {max(divergences):.3g} at guidance_scale=1: {setup.describe()}"


@FEW
@given(setup=setups())
@example(setup=Setup(guidance=GUIDANCE_FORMS[1]))  # every guidance form is always among the few
@example(setup=Setup(guidance=GUIDANCE_FORMS[2], family="gpt2"))
@example(setup=Setup(guidance=GUIDANCE_FORMS[3], lora=True))
@example(setup=Setup(guidance=GUIDANCE_FORMS[4], algorithm="rloo"))
@example(setup=Setup(tools=True, lora=True))  # TRL's tools: a tool's result is in the completion, masked out
def test_identity_at_guidance_scale_one(setup):
    check_identity(setup)


@pytest.mark.invariants
@pytest.mark.slow
@WIDE
@given(setup=setups())
def test_identity_at_guidance_scale_one_wide(setup):
    check_identity(setup)


# ---------------------------------------------------------------------------------------------------------------------
# 2. Method off is TRL


@in_folder
def check_method_off_is_trl(setup: Setup, folder: Path):
    runs = []
    for name, trl in (("trl", True), ("ours", False)):
        trainer = build(setup, folder / name, method=False, trl=trl, reward_funcs=[brevity], max_steps=2)
        trainer.train()
        runs.append(trainer)
    assert_same_run(*runs, name=f"TRL ({setup.describe()})")


@FEW
@given(setup=setups())
@example(setup=Setup(tools=True, family="qwen2"))
def test_method_off_is_trl(setup):
    check_method_off_is_trl(setup)


@pytest.mark.invariants
@pytest.mark.slow
@WIDE
@given(setup=setups())
def test_method_off_is_trl_wide(setup):
    check_method_off_is_trl(setup)


# ---------------------------------------------------------------------------------------------------------------------
# 3. The teacher and the base never move


def teacher_probe(trainer) -> torch.Tensor:
    """The teacher's guided hidden states on a fixed batch: what the distillation target is made of."""
    tokenizer = trainer.processing_class
    texts = ("write a poem about the sea", "a story")
    prompts = [tokenizer(text)["input_ids"] for text in texts]
    width = max(map(len, prompts))
    output = {
        "prompt_ids": torch.tensor([[0] * (width - len(p)) + p for p in prompts]),
        "prompt_mask": torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts]),
        "completion_ids": torch.tensor([[7, 8, 9], [10, 11, 0]]),
        "completion_mask": torch.tensor([[1, 1, 1], [1, 1, 0]]),
    }
    return trainer.cfg_teacher.hidden_states(output, conversational=False, prompts=list(texts))


def base_weights(trainer) -> dict[str, torch.Tensor]:
    model = trainer.accelerator.unwrap_model(trainer.model)
    return {name: p.detach().clone() for name, p in model.named_parameters() if "lora_" not in name}


@in_folder
def check_teacher_and_base_never_move(setup: Setup, folder: Path):
    trainer = build(setup, folder, learning_rate=5e-2, max_steps=2, diversity_reward="lexical")
    before = teacher_probe(trainer)
    adapter = setup.lora or setup.given == "peft_model"
    base_before = base_weights(trainer) if setup.lora else None
    policy_before = snapshot(trainer.model)
    trainer.train()
    assert torch.equal(teacher_probe(trainer), before), f"the teacher moved: {setup.describe()}"
    # Under mask_truncated_completions a tiny random model's samples are all truncated, so every token is masked and
    # nothing trains (TRL's behaviour); the teacher and the base must still not move.
    if not setup.mask_truncated_completions:
        assert any(not torch.equal(p, policy_before[n]) for n, p in trainer.model.named_parameters()), (
            "nothing trained"
        )
    if base_before is not None:
        for name, weight in base_weights(trainer).items():
            assert torch.equal(weight, base_before[name]), f"LoRA base weight {name} moved: {setup.describe()}"
    if adapter and trainer.cfg_teacher.adapter is not None:
        model = trainer.accelerator.unwrap_model(trainer.model)
        frozen = [p for n, p in model.named_parameters() if f".{trainer.cfg_teacher.adapter}." in n]
        assert frozen and not any(p.requires_grad for p in frozen)


@FEW
@given(setup=setups())
@example(setup=Setup(tools=True, given="peft_model"))
def test_teacher_and_base_never_move(setup):
    check_teacher_and_base_never_move(setup)


@pytest.mark.invariants
@pytest.mark.slow
@WIDE
@given(setup=setups())
def test_teacher_and_base_never_move_wide(setup):
    check_teacher_and_base_never_move(setup)


# ---------------------------------------------------------------------------------------------------------------------
# 4. What is logged is what is trained, and 5. a group reward sees whole groups, once


class RecordingGroupReward:
    """A group reward that records what it was given (rank by length: rewards differ within a group)."""

    pairwise = False

    def __init__(self):
        self.calls = []

    def __call__(self, prompt, completions, **kwargs):
        self.calls.append((prompt, list(map(str, completions))))
        lengths = [len(str(c)) for c in completions]
        return [sorted(lengths).index(length) / len(lengths) for length in lengths]


@st.composite
def logging_setups(draw):
    setup = draw(setups(families=("llama", "gpt2")))
    return setup, draw(st.sampled_from([None, 0.5])), draw(st.booleans()), draw(st.booleans())


@in_folder
def _check_logged_is_trained(drawn, folder: Path):
    setup, target, quality, weighted = drawn
    describe = (
        setup.describe() + f", diversity_target={target}, quality reward={quality}, quality x diversity={weighted}"
    )
    reward = RecordingGroupReward()
    options = dict(
        diversity_reward="lexical",  # replaced below by the recording reward (no embedder loads)
        diversity_coef=5.0,
        diversity_target=target,
        diversity_target_warmup_steps=1,
        max_steps=3,
        diversity_quality="teacher_likelihood" if weighted else "none",
    )
    if setup.algorithm == "rloo" and quality:
        options["normalize_advantages"] = True
    trainer = build(setup, folder, reward_funcs=[brevity] if quality else None, **options)
    trainer.diversity_reward = reward  # a user's group reward, as `diversity_reward="module:function"` resolves it
    k = setup.num_generations
    trained, rewards_used, coefs_used = [], [], []
    original_add = trainer._add_diversity_advantages

    def add(output, rewards, mode):
        # 5: since the last batch, the reward saw this batch's completions in groups of k sharing a prompt, each once.
        batch = len(rewards)
        calls = reward.calls[-(batch // k) :] if batch // k else []
        assert len(reward.calls) == len(rewards_used) // k + batch // k, describe
        prompts = [str(p) for p in list(trainer._logs["prompt"])[-batch:]]
        completions = [str(c) for c in list(trainer._logs["completion"])[-batch:]]
        assert [c for _, group in calls for c in group] == completions, describe
        for g, (prompt, group) in enumerate(calls):
            assert len(group) == k and set(prompts[g * k : (g + 1) * k]) == {str(prompt)}, describe
        coefs_used.append(trainer.diversity_coef)
        rewards_used.extend(rewards.tolist())
        original_add(output, rewards, mode)
        trained.extend(output["advantages"].tolist())

    likelihoods = []
    original_likelihood = trainer._teacher_likelihood

    def likelihood(output):
        q = original_likelihood(output)
        likelihoods.extend(q.tolist())
        return q

    trainer._add_diversity_advantages = add
    trainer._teacher_likelihood = likelihood
    trainer.train()
    # Quality x diversity scores every sample on the tokens it drew, a truncated one too:
    # a tiny random model gives no real sample the likelihood 1 that an empty one gets.
    assert bool(weighted) == bool(likelihoods), describe
    if setup.tools:  # the tool loop ran: some samples called the tool and got its result
        assert max(logged(trainer, "tools/call_frequency")) > 0, describe
    assert all(0 < q < 1 for q in likelihoods), f"teacher likelihoods {likelihoods}: {describe}"
    # 4: the completions table's advantages and diversity rewards, and the logged coefficient, are the trained ones.
    table_advantages = list(trainer._logs["advantages"])
    assert table_advantages == pytest.approx(trained[-len(table_advantages) :], abs=1e-5), describe
    table_rewards = list(trainer._logs["extra"]["diversity_reward"])
    assert table_rewards == pytest.approx(rewards_used[-len(table_rewards) :], abs=1e-6), describe
    if target is not None:
        assert logged(trainer, "diversity/coef") == pytest.approx(coefs_used), describe


@FEW
@given(drawn=logging_setups())
# Always among the few: quality x diversity with truncated completions masked whole.
@example(drawn=(Setup(mask_truncated_completions=True), None, False, True))
# And with TRL's tools: quality x diversity scores a sample on the tokens it sampled, not on a tool's result.
@example(drawn=(Setup(tools=True, mask_truncated_completions=True), None, True, True))
def test_what_is_logged_is_what_is_trained(drawn):
    _check_logged_is_trained(drawn)


@pytest.mark.invariants
@pytest.mark.slow
@WIDE
@given(drawn=logging_setups())
def test_what_is_logged_is_what_is_trained_wide(drawn):
    _check_logged_is_trained(drawn)


@settings(max_examples=40, **_COMMON)
@given(
    processes=st.integers(1, 3),
    k=st.integers(2, 5),
    groups_per_process=st.integers(1, 3),
    duplicate_prompts=st.booleans(),
)
def test_group_reward_sees_whole_groups_on_simulated_processes(processes, k, groups_per_process, duplicate_prompts):
    """Groups may span processes (a process holds `groups_per_process * k / processes` completions, not whole
    groups): every group is scored whole, once, on exactly one process, and each process gets the one-process
    rewards for its slice."""
    from toy_group_rewards import SimulatedProcesses

    total = processes * groups_per_process * k
    groups = total // k
    prompts = [f"prompt {0 if duplicate_prompts else g}" for g in range(groups) for _ in range(k)]
    completions = [f"answer {i} " + "word " * (i % 7) for i in range(total)]
    calls = []
    lock = threading.Lock()

    def reward(prompt, completions, **kwargs):
        with lock:
            calls.append((prompt, tuple(completions)))
        return [float(len(c)) for c in completions]

    expected = score_groups(reward, prompts, completions, k, {}, name="recording")
    one_process_calls = list(calls)
    calls.clear()
    per_process = total // processes

    def on_process(simulated):
        start = simulated.index * per_process
        return score_groups(
            reward,
            prompts[start : start + per_process],
            completions[start : start + per_process],
            k,
            {},
            name="recording",
            processes=simulated,
        )

    outcomes = SimulatedProcesses(processes).run(on_process)
    assert all(outcome == ("ok", expected) for outcome in outcomes), outcomes
    assert sorted(calls) == sorted(one_process_calls)  # each group once in all, whole
    assert all(len(group) == k for _, group in calls)


# ---------------------------------------------------------------------------------------------------------------------
# 6. The diversity measures

words = st.sampled_from(["sea", "poem", "the", "a", "blue", "cat", "sky", "red", "song", "of", "!", "."])
texts = st.lists(words, min_size=1, max_size=8).map(" ".join)
MEASURES = {"lexical": LexicalDiversity, "partition": PartitionDiversity}


@settings(max_examples=60, **_COMMON)
@given(measure=st.sampled_from(sorted(MEASURES)), group=st.lists(texts, min_size=2, max_size=6), data=st.data())
def test_diversity_measure_properties(measure, group, data):
    check_measure(MEASURES[measure](), group, data)


@pytest.mark.invariants
@pytest.mark.slow
@settings(max_examples=15, **_COMMON)
@given(group=st.lists(texts, min_size=2, max_size=5), data=st.data())
def test_embedding_diversity_properties_wide(group, data):
    from trl_diversity.rewards import EmbeddingDiversity

    check_measure(EmbeddingDiversity(), group, data, tolerance=1e-5)


def check_measure(measure, group: list[str], data, tolerance: float = 1e-9):
    rewards = measure.rewards(group)
    # Permuting a group permutes its rewards.
    order = data.draw(st.permutations(range(len(group))))
    permuted = measure.rewards([group[i] for i in order])
    assert permuted == pytest.approx([rewards[i] for i in order], abs=tolerance)
    # A duplicated completion never raises either copy's reward: replace completion j by a copy of completion i.
    i, j = data.draw(st.sampled_from([(a, b) for a in range(len(group)) for b in range(len(group)) if a != b]))
    duplicated = list(group)
    duplicated[j] = group[i]
    after = measure.rewards(duplicated)
    assert after[i] <= rewards[i] + tolerance and after[j] <= rewards[i] + tolerance
    # A blank completion scores lowest (0), whatever it replaces.
    blank = list(group)
    blank[j] = data.draw(st.sampled_from(["", " ", "\n\t"]))
    scored = measure.rewards(blank)
    assert scored[j] == 0.0 and scored[j] <= min(scored) + tolerance


# ---------------------------------------------------------------------------------------------------------------------
# 7. Determinism


@in_folder
def check_determinism(setup: Setup, folder: Path):
    runs = []
    for name in ("first", "second"):
        trainer = build(setup, folder / name, max_steps=2, diversity_reward="lexical", diversity_coef=3.0)
        trainer.train()
        runs.append(trainer)
    first, second = runs
    for a, b in zip(first.state.log_history, second.state.log_history):
        assert {k: v for k, v in a.items() if not any(w in k for w in TIMING)} == {
            k: v for k, v in b.items() if not any(w in k for w in TIMING)
        }, setup.describe()
    for (name, p), q in zip(first.model.named_parameters(), second.model.parameters()):
        assert torch.equal(p, q), f"{name} differs between two runs of one seed: {setup.describe()}"


@FEW
@given(setup=setups())
def test_same_seed_same_run(setup):
    check_determinism(setup)


@pytest.mark.invariants
@pytest.mark.slow
@WIDE
@given(setup=setups())
def test_same_seed_same_run_wide(setup):
    check_determinism(setup)
