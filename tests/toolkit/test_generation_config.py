"""Toolkit sampling uses an explicit generation configuration: nothing from the checkpoint's generation_config.json
but its end-of-sequence tokens, and the prompt renders with the caller's chat_template_kwargs."""

import json
import shutil

from tiny import CHAT_TEMPLATE, build_tokenizer
from transformers import AutoModelForCausalLM, AutoTokenizer

from trl_diversity.toolkit.generation import generate_records, render_prompt

PROMPTS = ["write a short poem about the sea", "describe a quiet morning in a small town"]


def _sample(folder, **kwargs):
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    records = generate_records(model, tokenizer, PROMPTS, num_samples=3, max_new_tokens=24, progress=False, **kwargs)
    return [r["completion_ids"] for r in records]


def test_the_checkpoints_generation_config_does_not_change_sampling(tiny_checkpoint, tmp_path):
    # Like Qwen2.5-Instruct's repetition_penalty: a sampling setting saved with the checkpoint.
    tuned = shutil.copytree(tiny_checkpoint, tmp_path / "tuned")
    config = json.loads((tuned / "generation_config.json").read_text())
    config.update(repetition_penalty=5.0, top_k=1, temperature=0.1, no_repeat_ngram_size=1, min_p=0.3)
    (tuned / "generation_config.json").write_text(json.dumps(config))

    plain = _sample(tiny_checkpoint)
    assert _sample(tuned) == plain
    # ... while a setting asked for explicitly does apply: top_k=1 makes every sample of a prompt the same
    greedy = _sample(tuned, top_k=1)
    assert greedy[0] == greedy[1] == greedy[2] and plain[0] != plain[1]


def test_render_prompt_passes_chat_template_kwargs():
    tokenizer = build_tokenizer()
    tokenizer.chat_template = (
        "{% if enable_thinking is defined and not enable_thinking %}<|system|> {% endif %}" + CHAT_TEMPLATE
    )
    default = render_prompt(tokenizer, PROMPTS[0], chat=True)
    quiet = render_prompt(tokenizer, PROMPTS[0], chat=True, chat_template_kwargs={"enable_thinking": False})
    assert quiet == [tokenizer.convert_tokens_to_ids("<|system|>"), *default]
