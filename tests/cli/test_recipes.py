from pathlib import Path

import pytest
from accelerate.commands.config.config_args import load_config_from_file

from trl_diversity import DiversityCFGConfig, DiversityCFGRLOOConfig
from trl_diversity.cli.train import parse

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
TRAINING_RECIPES = sorted(p for p in RECIPES.glob("*/*.yaml") if p.parent.name != "accelerate_configs")
ACCELERATE_CONFIGS = sorted((RECIPES / "accelerate_configs").glob("*.yaml"))


def test_the_expected_recipes_exist():
    names = {f"{p.parent.name}/{p.name}" for p in TRAINING_RECIPES}
    assert {"smollm2-135m/quality.yaml", "smollm2-135m/diversity.yaml", "smollm2-135m/lora.yaml"} <= names
    assert "smollm2-135m/rloo.yaml" in names
    assert {p.name for p in ACCELERATE_CONFIGS} >= {
        "multi_gpu.yaml",
        "deepspeed_zero2.yaml",
        "deepspeed_zero3.yaml",
        "fsdp2.yaml",
        "multi_cpu.yaml",
    }


@pytest.mark.parametrize("recipe", TRAINING_RECIPES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_recipe_builds_its_config(recipe):
    # A GPU recipe's `bf16: true` is refused on a CPU (train's precision check); the rest must build as written.
    script_args, config, model_args = parse([str(recipe), "--bf16", "false"])
    assert isinstance(config, DiversityCFGRLOOConfig if script_args.algorithm == "rloo" else DiversityCFGConfig)
    assert model_args.model_name_or_path
    assert config.num_generations >= 2


def test_quality_and_diversity_recipes_differ_only_in_the_diversity_weight():
    _, quality, _ = parse([str(RECIPES / "smollm2-135m/quality.yaml")])
    _, diversity, _ = parse([str(RECIPES / "smollm2-135m/diversity.yaml")])
    assert quality.diversity_coef == 0 and diversity.diversity_coef > 0
    assert (quality.guidance_scale, quality.learning_rate) == (diversity.guidance_scale, diversity.learning_rate)


@pytest.mark.parametrize("path", ACCELERATE_CONFIGS, ids=lambda p: p.name)
def test_every_accelerate_config_loads(path):
    config = load_config_from_file(str(path))
    assert config.num_processes >= 2
    assert str(config.distributed_type).split(".")[-1] in {"MULTI_GPU", "DEEPSPEED", "FSDP"}


def test_the_rloo_recipe_is_the_diversity_recipe_on_rloo():
    script_args, rloo, _ = parse([str(RECIPES / "smollm2-135m/rloo.yaml")])
    _, diversity, _ = parse([str(RECIPES / "smollm2-135m/diversity.yaml")])
    assert script_args.algorithm == "rloo" and isinstance(rloo, DiversityCFGRLOOConfig)
    for name in ("distill_coef", "diversity_coef", "guidance_scale", "num_generations", "learning_rate", "max_steps"):
        assert getattr(rloo, name) == getattr(diversity, name), name
