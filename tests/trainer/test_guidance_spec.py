"""The guidance specification: its parser and refusals, the teacher's guided hidden states against a naive
computation for every form, today's `guidance_scale` unchanged, and the identity at weight 0."""

import pytest
import torch
from tiny import FAMILIES, build_tokenizer
from tiny_training import make_args
from transformers import AutoModelForCausalLM

from trl_diversity.errors import UserError
from trl_diversity.guidance import combine, parse_guidance, plain_cfg, resolve_guidance
from trl_diversity.guidance.contexts import negative_context
from trl_diversity.trainer.divergence import _project, _weight_and_bias
from trl_diversity.trainer.teacher.guided_forward import guided_hidden_states, guided_teacher_hidden_states

FORMS = [
    "2*null",
    "2*null from 2",
    '1*"{prompt} Give the most common, predictable answer."',
    "1*null + 0.5*'{prompt} Answer in the usual way.'",
    "1.5*layer:1",
    "1*null + 1*layer:1 from 1",
    '0.5*"write a poem" + 1*"{prompt} Be brief." + 0.5*layer:1 from 3',
]


@pytest.mark.parametrize("text", FORMS)
def test_a_specification_reads_back_as_written(text):
    spec = parse_guidance(text)
    assert parse_guidance(str(spec)) == spec


@pytest.mark.parametrize(
    "text, problem",
    [
        ("", "empty"),
        ("2", "cannot be read"),
        ("null", "cannot be read"),
        ("2*nul", "cannot be read"),
        ("-1*null", "cannot be read"),
        ("2*null +", "cannot be read"),
        ("2*null 1*null", "expected '\\+'"),
        ("1*null + 2*null", "twice"),
        ("1*layer:0", "layer:0 reads out no layer"),
        ("1*'{prompt} {prompt}'", "once"),
        ("2*null from x", "expected '\\+'"),
    ],
)
def test_an_invalid_specification_is_refused_in_one_line_before_a_model_loads(tmp_path, text, problem):
    with pytest.raises(UserError, match=problem) as refused:
        parse_guidance(text)
    assert "\n" not in str(refused.value)
    with pytest.raises(ValueError, match=problem):
        make_args(tmp_path, guidance=text)  # the config refuses it: no model is loaded


def test_guidance_and_a_non_default_guidance_scale_are_refused_together(tmp_path):
    with pytest.raises(ValueError, match="guidance or guidance_scale, not both.*'1.5\\*null'"):
        make_args(tmp_path, guidance="2*null", guidance_scale=2.5)


def test_guidance_scale_keeps_its_meaning():
    # guidance=None is plain CFG at guidance_scale, one null negative of weight gamma - 1, from the first token
    for scale in (1.0, 1.5, 3.0, 5.0):
        spec = resolve_guidance(None, scale)
        assert spec == plain_cfg(scale) == parse_guidance(f"{scale - 1:g}*null")
        assert spec.is_plain_cfg and spec.forward_passes_per_token() == (1 if scale == 1 else 2)
    c, u = torch.randn(3, 7), torch.randn(3, 7)
    assert torch.equal(combine(c, [u], [2.0]), u + 3.0 * (c - u))  # bit for bit today's CFG


def _tiny(family):
    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    if family == "llama":
        from tiny import build_model

        return build_model(len(tokenizer)).eval(), tokenizer
    return AutoModelForCausalLM.from_config(FAMILIES[family](len(tokenizer))).eval(), tokenizer


def _naive_log_probs(model, spec, prompt_text, context_ids, completion, tokenizer):
    """The guided log-probabilities of each completion token, branch by branch from unpadded sequences."""
    with torch.no_grad():
        full = model(input_ids=torch.tensor([context_ids + completion]), output_hidden_states=True)
        at = slice(len(context_ids) - 1, len(context_ids) - 1 + len(completion))
        conditional = torch.log_softmax(full.logits[0, at].float(), -1)
        negatives = []
        for negative in spec.context_negatives:
            ids = tokenizer(negative_context(negative, prompt_text, ""))["input_ids"] or [tokenizer.bos_token_id]
            logits = model(input_ids=torch.tensor([ids + completion])).logits[0]
            negatives.append(torch.log_softmax(logits[len(ids) - 1 : len(ids) - 1 + len(completion)].float(), -1))
        for negative in spec.layer_negatives:
            from trl_diversity.guidance.readout import final_norm

            hidden = final_norm(model)(full.hidden_states[negative.layer][0, at])
            negatives.append(torch.log_softmax(model.get_output_embeddings()(hidden).float(), -1))
        weights = [n.weight for n in spec.context_negatives] + [n.weight for n in spec.layer_negatives]
        guided = torch.log_softmax(combine(conditional, negatives, weights), -1)
        guided[: spec.start] = conditional[: spec.start]
        return guided


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("text", FORMS)
def test_the_teachers_guided_hidden_states_equal_a_naive_computation(family, text):
    model, tokenizer = _tiny(family)
    spec = parse_guidance(text)
    prompts = ["write a poem about the sea", "tell a story"]
    contexts = [tokenizer(p)["input_ids"] for p in prompts]
    generator = torch.Generator().manual_seed(0)
    completions = [torch.randint(7, len(tokenizer), (n,), generator=generator).tolist() for n in (5, 3, 4, 2)]
    rows = [0, 0, 1, 1]  # two completions per prompt
    width, length = max(map(len, contexts)), max(map(len, completions))
    prompt_ids = torch.tensor([[0] * (width - len(contexts[r])) + contexts[r] for r in rows])
    prompt_mask = torch.tensor([[0] * (width - len(contexts[r])) + [1] * len(contexts[r]) for r in rows])
    completion_ids = torch.tensor([c + [0] * (length - len(c)) for c in completions])
    completion_mask = torch.tensor([[1] * len(c) + [0] * (length - len(c)) for c in completions])
    negative_ids = [
        [tokenizer(negative_context(n, prompts[r], ""))["input_ids"] or [tokenizer.bos_token_id] for r in rows]
        for n in spec.context_negatives
    ]
    for batch_size in (None, 1):  # the chunking does not change the result
        hidden = guided_hidden_states(
            model, prompt_ids, prompt_mask, completion_ids, completion_mask, spec, negative_ids, 0, batch_size
        )
        weight, bias = _weight_and_bias(model.get_output_embeddings())
        for b, completion in enumerate(completions):
            actual = torch.log_softmax(_project(hidden[b, : len(completion)], weight, bias).float(), -1)
            expected = _naive_log_probs(model, spec, prompts[rows[b]], contexts[rows[b]], completion, tokenizer)
            torch.testing.assert_close(actual, expected, atol=5e-4, rtol=5e-4, msg=f"{family} {text} row {b}")


@pytest.mark.parametrize("text", FORMS)
def test_every_form_at_weight_zero_is_the_unguided_model(text):
    model, tokenizer = _tiny("llama")
    zero = parse_guidance(text)
    zero = type(zero)(tuple(type(n)(0.0, n.text, n.layer) for n in zero.negatives), zero.start)
    assert zero.is_identity
    prompt, completion = tokenizer("write a poem")["input_ids"], [9, 10, 11, 12]
    negative_ids = [[tokenizer(negative_context(n, "write a poem", ""))["input_ids"]] for n in zero.context_negatives]
    hidden = guided_hidden_states(
        model,
        torch.tensor([prompt]),
        torch.ones(1, len(prompt), dtype=torch.long),
        torch.tensor([completion]),
        torch.ones(1, 4, dtype=torch.long),
        zero,
        negative_ids,
        0,
    )
    unguided = guided_teacher_hidden_states(
        model,
        torch.tensor([prompt]),
        torch.ones(1, len(prompt), dtype=torch.long),
        torch.tensor([completion]),
        torch.ones(1, 4, dtype=torch.long),
        [1],
        1.0,
        0,
    )
    torch.testing.assert_close(hidden, unguided, atol=1e-5, rtol=1e-5)


def test_a_layer_at_the_models_depth_is_refused_with_the_depth(tiny_checkpoint, tmp_path):
    from tiny_training import make_trainer

    with pytest.raises(UserError, match=r"layer:2 is not an early layer of the teacher, which has 2 layers"):
        make_trainer(tiny_checkpoint, tmp_path, guidance="1*layer:2")
