"""The quality x diversity reward (`diversity_quality="teacher_likelihood"`): its quality term against a naive
computation, its use in the advantage, its checks, and a short training run."""

import pytest
import torch
from tiny_training import logged, make_args, make_trainer, next_token_logits

from trl_diversity import guided_log_probs
from trl_diversity.rewards.baselines import other_rewards_baselines
from trl_diversity.trainer.teacher_quality import (
    TOKEN_CHUNK,
    relative_to_group_best,
    sampled_token_log_probs,
    sampled_token_mask,
    teacher_likelihood,
)


def test_sampled_token_log_probs_match_full_log_softmax_across_chunks():
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 50, bias=True)
    hidden = torch.randn(TOKEN_CHUNK + 7, 8)  # more than one chunk
    tokens = torch.randint(0, 50, (len(hidden),))
    expected = torch.log_softmax(2.0 * head(hidden), -1).gather(-1, tokens[:, None]).squeeze(-1)
    torch.testing.assert_close(sampled_token_log_probs(hidden, head, tokens, scale=2.0), expected.detach())


def test_teacher_likelihood_is_the_geometric_mean_probability_of_the_unmasked_tokens():
    torch.manual_seed(1)
    head = torch.nn.Linear(6, 20, bias=False)
    hidden = torch.randn(3, 5, 6)
    ids = torch.randint(0, 20, (3, 5))
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]])
    q = teacher_likelihood(hidden, ids, mask, head)
    for row in range(2):
        n = int(mask[row].sum())
        probs = torch.softmax(head(hidden[row, :n]), -1).gather(-1, ids[row, :n, None]).squeeze(-1)
        assert q[row].item() == pytest.approx(probs.prod().item() ** (1 / n), rel=1e-5)
        assert 0 < q[row].item() <= 1
    assert q[2].item() == 1.0  # an empty completion: no evidence against it


@pytest.mark.parametrize("k", [2, 3, 4])
def test_weights_are_relative_to_each_groups_likeliest_sample(k):
    q = torch.rand(5 * k) + 1e-3
    weights = relative_to_group_best(q, k).view(-1, k)
    torch.testing.assert_close(weights.amax(-1), torch.ones(5))
    assert bool((weights > 0).all()) and bool((weights <= 1).all())
    # within a group the order is kept, and the ratios too
    torch.testing.assert_close(weights / weights[:, :1], q.view(-1, k) / q.view(-1, k)[:, :1])


def sampled_tokens(trainer, completion_ids):
    """The tokens a sample really drew, read from its ids alone: up to its first end-of-sequence token, or all of
    them when it was truncated (TRL's `mask_truncated_completions` zeroes a truncated sample's completion mask)."""
    eos = set(trainer.eos_token_ids)
    ids = completion_ids.tolist()
    ends = [i for i, token in enumerate(ids) if token in eos]
    return completion_ids[: ends[0] + 1] if ends else completion_ids


@pytest.mark.parametrize("mask_truncated", [False, True])
def test_advantage_is_coef_times_rloo_of_likelihood_weighted_rewards(tiny_checkpoint, tmp_path, mask_truncated):
    trainer = make_trainer(
        tiny_checkpoint,
        tmp_path,
        diversity_coef=7.0,
        diversity_quality="teacher_likelihood",
        mask_truncated_completions=mask_truncated,
    )
    trainer.model.train()
    batch = [trainer.train_dataset[i // 4] for i in range(8)]
    output = trainer._generate_and_score_completions(batch)
    rewards = trainer._latest_diversity_rewards

    # q_i from scratch: each completion's sampled tokens under the CFG-guided teacher, one unpadded sequence at a time.
    teacher = trainer.accelerator.unwrap_model(trainer.teacher)
    null = torch.tensor(trainer.cfg_teacher.unconditional_ids(conversational=True))
    q, truncated = [], 0
    with torch.no_grad():
        for row in range(8):
            prompt = output["prompt_ids"][row][output["prompt_mask"][row].bool()]
            completion = sampled_tokens(trainer, output["completion_ids"][row])
            truncated += int(output["completion_mask"][row].sum() == 0)
            log_probs = guided_log_probs(
                next_token_logits(teacher, prompt, completion),
                next_token_logits(teacher, null, completion),
                trainer.args.guidance_scale,
            )
            q.append(log_probs.gather(-1, completion[:, None]).mean().exp().item())
    # the tiny random model rarely ends a sample: under mask_truncated_completions most rows are masked whole
    assert (truncated > 0) == mask_truncated
    q = torch.tensor(q)
    assert bool((q < 0.5).all())  # a truncated sample is scored on its tokens, not given q = 1 as if it were empty
    weighted = q.view(2, 4) / q.view(2, 4).amax(-1, keepdim=True) * rewards.view(2, 4)
    expected = 7.0 * (weighted.reshape(-1) - other_rewards_baselines(weighted.reshape(-1), 4))
    # GRPO's own advantage is 0 here (no quality reward), so the advantage is the diversity term alone
    torch.testing.assert_close(output["advantages"], expected, rtol=1e-4, atol=1e-5)
    assert trainer._metrics["train"]["diversity/teacher_likelihood"][-1] == pytest.approx(q.mean().item(), rel=1e-4)


def test_tool_result_tokens_do_not_count_in_the_teacher_likelihood():
    torch.manual_seed(2)
    head = torch.nn.Linear(6, 20, bias=False)
    hidden = torch.randn(2, 6, 6)
    ids = torch.randint(0, 20, (2, 6))
    completion_mask = torch.ones(2, 6, dtype=torch.long)
    tool_mask = torch.tensor([[1, 1, 0, 0, 1, 1], [1, 1, 1, 1, 1, 1]])
    q = teacher_likelihood(hidden, ids, sampled_token_mask(ids, completion_mask, pad_id=0, tool_mask=tool_mask), head)
    model_tokens = tool_mask[0].bool()
    probs = torch.softmax(head(hidden[0, model_tokens]), -1).gather(-1, ids[0, model_tokens, None]).squeeze(-1)
    assert q[0].item() == pytest.approx(probs.prod().item() ** (1 / 4), rel=1e-5)


def test_the_sampled_token_mask_restores_truncated_rows_and_keeps_the_rest():
    pad = 0
    ids = torch.tensor([[5, 6, 7, 8], [5, 9, 2, 0], [4, 0, 3, 0], [5, 6, 0, 0]])  # eos = 2, pad = 0
    # TRL's mask under mask_truncated_completions: rows 0 and 2 (no end-of-sequence token) masked whole
    trl_mask = torch.tensor([[0, 0, 0, 0], [1, 1, 1, 0], [0, 0, 0, 0], [1, 1, 0, 0]])
    expected = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 0, 0]])
    torch.testing.assert_close(sampled_token_mask(ids, trl_mask, pad), expected)
    tools = torch.tensor([[1, 0, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1], [0, 1, 1, 1]])
    torch.testing.assert_close(sampled_token_mask(ids, trl_mask, pad, tools), expected * tools)


def test_a_short_run_logs_the_teacher_likelihood_and_trains(tiny_checkpoint, tmp_path):
    trainer = make_trainer(tiny_checkpoint, tmp_path, max_steps=2, diversity_quality="teacher_likelihood")
    trainer.train()
    likelihood = logged(trainer, "diversity/teacher_likelihood")
    assert len(likelihood) == 2 and all(0 < value <= 1 for value in likelihood)
    # the measured diversity is logged as without the weights (the paper's pairwise diversity, the controller's input)
    assert logged(trainer, "diversity/pairwise") == logged(trainer, "diversity/reward/mean")
    assert len(logged(trainer, "distill/divergence")) == 2


def test_bad_settings_are_refused_before_any_model_loads(tmp_path):
    with pytest.raises(ValueError, match="Unknown diversity_quality 'reward_model'"):
        make_args(tmp_path, diversity_quality="reward_model")
    with pytest.raises(ValueError, match="distill_coef=0. Set distill_coef > 0"):
        make_args(tmp_path, distill_coef=0.0, diversity_quality="teacher_likelihood")
