"""`generate` with a guidance specification: the same arithmetic as the teacher, checked against transformers' own CFG
and against the teacher's guided distribution, and recorded in the file."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from trl_diversity.guidance import parse_guidance
from trl_diversity.guidance.contexts import negative_context
from trl_diversity.toolkit.generation import Sampling, generate_batches, render_prompt
from trl_diversity.toolkit.guided_sampling import GuidedLogitsProcessor
from trl_diversity.trainer.divergence import _project, _weight_and_bias
from trl_diversity.trainer.teacher.guided_forward import guided_hidden_states

PROMPTS = ["write a poem about the sea", "tell a story about a cat", "describe a city"]


def _sample(model, tokenizer, **sampling):
    settings = Sampling(num_samples=2, max_new_tokens=6, prompts_per_batch=2, seed=3, **sampling)
    return [
        r["completion_ids"]
        for batch in generate_batches(model, tokenizer, PROMPTS, settings, progress=False)
        for r in batch
    ]


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint):
    return AutoModelForCausalLM.from_pretrained(tiny_checkpoint).eval(), AutoTokenizer.from_pretrained(tiny_checkpoint)


@pytest.mark.parametrize("scale", [1.5, 3.0])
def test_plain_cfg_as_a_specification_samples_what_transformers_cfg_samples(tiny, scale):
    model, tokenizer = tiny
    builtin = _sample(model, tokenizer, guidance_scale=scale)
    ours = _sample(model, tokenizer, guidance=f"{scale - 1:g}*null")
    assert ours == builtin


@pytest.mark.parametrize(
    "text",
    ["2*null from 2", '1*"{prompt} Give the most common answer." + 1*null', "1*layer:1 from 1", "1*null + 1*layer:1"],
)
def test_the_sampled_distribution_is_the_teachers(tiny, text):
    """At every step the processor's scores give the guided distribution the trainer's teacher computes for the same
    prompt and prefix."""
    model, tokenizer = tiny
    spec = parse_guidance(text)
    prompt = PROMPTS[0]
    prompt_ids = render_prompt(tokenizer, prompt, True)
    completion = [9, 10, 11, 12, 13]
    negatives = [[render_prompt(tokenizer, negative_context(n, prompt, ""), True)] for n in spec.context_negatives]
    weight, bias = _weight_and_bias(model.get_output_embeddings())
    hidden = guided_hidden_states(
        model,
        torch.tensor([prompt_ids]),
        torch.ones(1, len(prompt_ids), dtype=torch.long),
        torch.tensor([completion]),
        torch.ones(1, len(completion), dtype=torch.long),
        spec,
        negatives,
        tokenizer.pad_token_id,
    )
    teacher = torch.log_softmax(_project(hidden[0], weight, bias).float(), -1)
    with GuidedLogitsProcessor(model, spec, negatives, len(prompt_ids), tokenizer.pad_token_id) as processor:
        for t in range(len(completion)):
            ids = torch.tensor([prompt_ids + completion[:t]])
            with torch.no_grad():
                # one token at a time would be generate's cached forwards; a full forward gives the same scores
                scores = model(input_ids=ids).logits[:, -1]
            guided = torch.log_softmax(processor(ids, scores).float(), -1)
            torch.testing.assert_close(guided[0], teacher[t], atol=5e-4, rtol=5e-4, msg=f"{text} position {t}")


def test_a_guided_file_records_its_guidance_and_its_forward_passes(tiny):
    model, tokenizer = tiny
    settings = Sampling(num_samples=2, max_new_tokens=4, prompts_per_batch=2, guidance='1*null + 1*"{prompt} No."')
    records = [r for batch in generate_batches(model, tokenizer, PROMPTS[:2], settings, progress=False) for r in batch]
    assert {r["guidance"] for r in records} == {'1*null + 1*"{prompt} No."'}
    assert {r["forward_passes_per_token"] for r in records} == {3}
