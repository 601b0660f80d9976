"""The method on tiny models of other families than Llama, built from configs: Qwen2, Gemma 2 (no soft-capping),
GPT-2 (absolute positions) and Granite (scaled logits).

The teacher's hidden states, projected by its head and scaled as the model scales its logits, must give exactly the
logits the model itself computes for each context run alone: left padding, the shared key-value cache, absolute
positions and logit scaling all show up there.
"""

import pytest
import torch
from tiny import FAMILIES, build
from tiny_training import logged, make_trainer

from trl_diversity.trainer.logit_scale import logit_scale
from trl_diversity.trainer.teacher import guided_teacher_hidden_states


@pytest.fixture(params=list(FAMILIES))
def family_checkpoint(request, tmp_path_factory):
    model, tokenizer = build(request.param)
    folder = tmp_path_factory.mktemp(request.param) / "model"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def head_logits(model, hidden):
    return torch.nn.functional.linear(hidden, model.get_output_embeddings().weight.float()) * logit_scale(model)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_teacher_logits_are_the_models_own_for_each_context_run_alone(family):
    model, tokenizer = build(family)
    prompts = [tokenizer("write a poem about the sea")["input_ids"], tokenizer("a story")["input_ids"]]
    null = tokenizer("")["input_ids"] or [tokenizer.bos_token_id]
    generator = torch.Generator().manual_seed(0)
    completions = [torch.randint(7, len(tokenizer), (n,), generator=generator).tolist() for n in (5, 3, 4, 2)]
    rows = [0, 0, 1, 1]  # two completions per prompt
    width, length = max(map(len, prompts)), max(map(len, completions))
    prompt_ids = torch.tensor([[0] * (width - len(prompts[r])) + prompts[r] for r in rows])
    prompt_mask = torch.tensor([[0] * (width - len(prompts[r])) + [1] * len(prompts[r]) for r in rows])
    completion_ids = torch.tensor([c + [0] * (length - len(c)) for c in completions])
    completion_mask = torch.tensor([[1] * len(c) + [0] * (length - len(c)) for c in completions])

    for scale, contexts in ((1.0, [prompts[r] for r in rows]), (0.0, [null] * 4)):  # conditional, unconditional
        hidden = guided_teacher_hidden_states(
            model, prompt_ids, prompt_mask, completion_ids, completion_mask, null, scale, pad_id=0
        )
        for b, (context, completion) in enumerate(zip(contexts, completions)):
            with torch.no_grad():
                alone = model(input_ids=torch.tensor([context + completion])).logits[0].float()
            expected = alone[len(context) - 1 : len(context) - 1 + len(completion)]
            actual = head_logits(model, hidden[b, : len(completion)])
            torch.testing.assert_close(actual, expected, atol=2e-4, rtol=2e-4, msg=f"{family} row {b} scale {scale}")


def test_granite_logit_scaling_is_read_as_a_division():
    model, _ = build("granite")
    assert logit_scale(model) == pytest.approx(0.25)


def test_granite_written_two_ways_distills_alike(tmp_path):
    """`logits_scaling=4`, or the head divided by 4 with `logits_scaling=1`: one model, one distillation signal."""
    from trl_diversity.data import load_prompts

    scaled, tokenizer = build("granite")
    plain, _ = build("granite")
    plain.config.logits_scaling = 1.0
    with torch.no_grad():
        plain.lm_head.weight.div_(4.0)
    divergences = []
    for name, model in (("scaled", scaled), ("plain", plain)):
        folder = tmp_path / name
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        trainer = make_trainer(str(folder), tmp_path / f"run-{name}", max_steps=1, learning_rate=0.0)
        trainer.train_dataset = load_prompts("train", conversational=True, limit=16)
        trainer.train()
        divergences.append(logged(trainer, "distill/divergence"))
    assert len(divergences[0]) == len(divergences[1]) == 1
    assert divergences[0][0] == pytest.approx(divergences[1][0], rel=1e-3)


def test_each_family_trains_with_distillation_and_diversity(family_checkpoint, tmp_path):
    trainer = make_trainer(family_checkpoint, tmp_path, max_steps=2, diversity_reward="lexical")
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    trainer.train()
    losses, divergences = logged(trainer, "loss"), logged(trainer, "distill/divergence")
    assert len(losses) == len(divergences) == 2
    assert all(torch.isfinite(torch.tensor(losses))) and all(d > 0 for d in divergences)
    assert any(not torch.equal(p, before[name]) for name, p in trainer.model.named_parameters())
