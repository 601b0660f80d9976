"""Bad input gets a clear error naming the problem and the fix, before any expensive work."""

import math

import pytest
from datasets import Dataset
from tiny_training import make_args, make_trainer
from transformers import AutoTokenizer

from trl_diversity import DiversityCFGTrainer
from trl_diversity.errors import UserError
from trl_diversity.rewards.embedder import load_embedder


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"num_generations": 1, "per_device_train_batch_size": 1}, "needs at least 2 samples per prompt"),
        ({"diversity_coef": -1.0}, "diversity_coef must be a finite number >= 0"),
        ({"distill_coef": -0.5}, "distill_coef must be a finite number >= 0"),
        ({"distill_coef": math.nan}, "distill_coef must be a finite number >= 0"),
        ({"distill_divergence": "kl"}, "choose one of reverse_kl, forward_kl, jsd"),
        ({"guidance_scale": 0.0}, "guidance_scale must be a finite number > 0"),
        ({"guidance_scale": math.inf}, "guidance_scale must be a finite number > 0"),
        ({"distill_jsd_beta": 1.0}, "distill_jsd_beta must lie strictly between 0 and 1"),
    ],
)
def test_invalid_config_values(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        make_args(tmp_path, **overrides)


def test_guidance_below_one_is_legal_but_warned(tmp_path):
    with pytest.warns(UserWarning, match="anti-guidance"):
        config = make_args(tmp_path, guidance_scale=0.5)
    assert config.guidance_scale == 0.5


# TRL's own GRPOConfig still sets transformers' deprecated `gradient_checkpointing` (ours moves it to the new name).
@pytest.mark.filterwarnings("ignore:`gradient_checkpointing` is deprecated:FutureWarning")
def test_trl_config_instead_of_ours_is_refused_naming_the_conversion(tiny_checkpoint, tmp_path):
    from trl import GRPOConfig, RLOOConfig

    from trl_diversity import DiversityCFGRLOOTrainer

    with pytest.raises(TypeError, match=r"needs a DiversityCFGConfig.*DiversityCFGConfig\(\*\*your_grpoconfig"):
        DiversityCFGTrainer(model=tiny_checkpoint, args=GRPOConfig(output_dir=str(tmp_path), use_cpu=True))
    with pytest.raises(TypeError, match=r"needs a DiversityCFGRLOOConfig.*\(\*\*your_rlooconfig\.to_dict"):
        DiversityCFGRLOOTrainer(model=tiny_checkpoint, args=RLOOConfig(output_dir=str(tmp_path), use_cpu=True))


def _trainer_with(tiny_checkpoint, tmp_path, dataset, tokenizer=None):
    return DiversityCFGTrainer(
        model=tiny_checkpoint,
        args=make_args(tmp_path),
        train_dataset=dataset,
        processing_class=tokenizer or AutoTokenizer.from_pretrained(tiny_checkpoint),
    )


def test_dataset_without_prompt_column(tiny_checkpoint, tmp_path):
    with pytest.raises(ValueError, match="no `prompt` column .*'question'.*rename_column"):
        _trainer_with(tiny_checkpoint, tmp_path, Dataset.from_dict({"question": ["write a poem"] * 8}))


def test_dataset_with_an_empty_prompt(tiny_checkpoint, tmp_path):
    with pytest.raises(ValueError, match="row 2 has an empty prompt"):
        _trainer_with(tiny_checkpoint, tmp_path, Dataset.from_dict({"prompt": ["a poem", "a song", "  ", "a tale"]}))
    conversational = Dataset.from_dict({"prompt": [[{"role": "user", "content": ""}]]})
    with pytest.raises(ValueError, match="row 0 has an empty prompt"):
        _trainer_with(tiny_checkpoint, tmp_path, conversational)


def test_conversational_prompts_need_a_chat_template(tiny_checkpoint, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint)
    tokenizer.chat_template = None
    dataset = Dataset.from_dict({"prompt": [[{"role": "user", "content": "write a poem"}]] * 8})
    with pytest.raises(ValueError, match="no chat template"):
        _trainer_with(tiny_checkpoint, tmp_path, dataset, tokenizer)


def test_embedder_that_is_not_a_sentence_transformers_model(tiny_checkpoint, tmp_path):
    empty = tmp_path / "not-an-embedder"
    empty.mkdir()
    with pytest.raises(ValueError, match="Could not load the diversity embedder"):
        load_embedder(str(empty))
    with pytest.raises(ValueError, match="diversity embedder .* does not exist"):
        make_trainer(tiny_checkpoint, tmp_path, diversity_embedder=str(tmp_path / "missing"))


def test_recipe_value_of_the_wrong_type(tmp_path, capsys):
    from trl_diversity.cli.train import parse

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("guidance_scale: strong\n")
    with pytest.raises(UserError, match="--guidance_scale.*invalid float value: 'strong'"):
        parse([str(recipe)])
