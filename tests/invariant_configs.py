"""The configuration space the invariant tests draw from, and how to build a trainer for one drawn configuration.

A `Setup` is one point of the space the trainers accept: model family, how the model is given, LoRA or full, the
algorithm and its options, the batch schedule, the teacher's guidance, TRL's tools (`tiny_tools.py`). `setups()` is a hypothesis strategy over the valid points; `build`
turns one into a trainer on tiny models built from configs (no download, a second or two a run).
"""

from __future__ import annotations

import copy
import dataclasses
from collections import Counter
from pathlib import Path

import hypothesis.strategies as st
import torch
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from tiny import FAMILIES, build_tokenizer
from tiny_tools import MAX_POSITIONS, TOOLS, build_tool_tokenizer, calls_a_tool
from tiny_training import TINY_RUN
from transformers import AutoModelForCausalLM
from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

from trl_diversity import DiversityCFGConfig, DiversityCFGRLOOConfig, DiversityCFGRLOOTrainer, DiversityCFGTrainer
from trl_diversity.data import load_prompts

GIVEN = ("path", "memory", "memory_changed", "peft_model")
LOSS_TYPES = ("grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo")
# Guided teachers beyond plain CFG (None: plain CFG at guidance_scale); the tiny models have 2 layers.
GUIDANCE_FORMS = (
    None,
    "2*null from 2",
    '1*"{prompt} Give the most common, predictable answer."',
    "1*null + 0.5*'{prompt} Be brief.'",
    "1*layer:1",
)
LORA_TARGETS = {family: ["c_attn"] if family == "gpt2" else ["q_proj", "v_proj"] for family in ["llama", *FAMILIES]}


@dataclasses.dataclass(frozen=True)
class Setup:
    family: str = "llama"
    given: str = "path"  # a checkpoint path, the model in memory, in memory and changed, or a PeftModel
    lora: bool = False  # a peft_config (not with a PeftModel)
    algorithm: str = "grpo"
    beta: float = 0.0
    equal_prompt_lengths: bool = False
    teacher_is_checkpoint: bool = False  # teacher_model set to the same checkpoint
    loss_type: str = "dapo"  # GRPO only
    steps_per_generation: int = 1
    num_iterations: int = 1
    gradient_accumulation_steps: int = 1
    num_generations: int = 4
    mask_truncated_completions: bool = False  # TRL zeroes a truncated completion's mask whole
    guidance: str | None = None  # the teacher's guidance specification (None: plain CFG)
    tools: bool = False  # TRL's tools (GRPO only): half the samples call one, its result masked out (tiny_tools.py)

    def describe(self) -> str:
        return ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self))


@st.composite
def setups(draw, families=tuple(["llama", *FAMILIES])) -> Setup:
    given = draw(st.sampled_from(GIVEN))
    algorithm = draw(st.sampled_from(["grpo", "rloo"]))
    accumulation = draw(st.sampled_from([1, 2]))
    family = draw(st.sampled_from(families))
    return Setup(
        family=family,
        given=given,
        lora=given != "peft_model" and draw(st.booleans()),
        algorithm=algorithm,
        beta=draw(st.sampled_from([0.0, 0.04])),
        equal_prompt_lengths=draw(st.booleans()),
        # The checkpoint is the initial policy only when the model is the checkpoint.
        teacher_is_checkpoint=given in ("path", "memory") and draw(st.booleans()),
        loss_type=draw(st.sampled_from(LOSS_TYPES)) if algorithm == "grpo" else "dapo",
        gradient_accumulation_steps=accumulation,
        steps_per_generation=draw(st.sampled_from([accumulation, 2 * accumulation])),
        num_iterations=draw(st.sampled_from([1, 2])),
        num_generations=draw(st.sampled_from([2, 4])),
        mask_truncated_completions=draw(st.booleans()),
        guidance=draw(st.sampled_from(GUIDANCE_FORMS)),
        # TRL's RLOO has no tools; the tools preamble is longer than GPT-2's learned positions here.
        tools=algorithm == "grpo" and family != "gpt2" and draw(st.sampled_from([False, False, True])),
    )


def checkpoint(folder: Path, family: str, tools: bool = False) -> str:
    """A tiny model of `family`, saved once per folder (with `tools`: over the tool-calling tokenizer, with room for
    the tools preamble)."""
    folder = folder / (f"{family}-tools" if tools else family)
    if not (folder / "config.json").exists():
        tokenizer = build_tool_tokenizer() if tools else build_tokenizer()
        if family == "llama":
            from tiny import build_model

            model = build_model(len(tokenizer))
        else:
            torch.manual_seed(0)
            model = AutoModelForCausalLM.from_config(FAMILIES[family](len(tokenizer)))
        if tools:
            model.config.max_position_embeddings = MAX_POSITIONS  # rotary positions: only the limit changes
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    return str(folder)


def prompts(equal_lengths: bool, count: int = 16) -> Dataset:
    data = load_prompts("train", conversational=True, limit=200)
    if not equal_lengths:
        return data.select(range(count))
    tokenizer = build_tokenizer()
    lengths = [len(tokenizer(row[0]["content"])["input_ids"]) for row in data["prompt"]]
    common, _ = Counter(lengths).most_common(1)[0]
    rows = [i for i, length in enumerate(lengths) if length == common]
    assert len(rows) >= count // 2, "too few bundled prompts of one length"
    return data.select((rows * 2)[:count])


def model_argument(setup: Setup, path: str):
    if setup.given == "path":
        return path
    model = AutoModelForCausalLM.from_pretrained(path)
    if setup.given == "memory_changed":
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    if setup.given == "peft_model":
        # A trained-looking adapter (non-zero B), so that a teacher that ignored it would differ from the policy.
        lora = LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGETS[setup.family], init_lora_weights=False)
        torch.manual_seed(2)  # the same adapter for every trainer built from this setup
        model = get_peft_model(model, lora)
    return model


def training_settings(setup: Setup, output_dir: str, **overrides) -> dict:
    settings = {
        **TINY_RUN,
        "output_dir": output_dir,
        "max_steps": 1,
        "per_device_train_batch_size": 4,
        "num_generations": setup.num_generations,
        "gradient_accumulation_steps": setup.gradient_accumulation_steps,
        "steps_per_generation": setup.steps_per_generation,
        "num_iterations": setup.num_iterations,
        "beta": setup.beta,
        "disable_dropout": True,
        "mask_truncated_completions": setup.mask_truncated_completions,
    }
    if setup.tools:
        settings["max_completion_length"] = 48  # the call, the tool's result and a continuation
    if setup.algorithm == "grpo":
        settings["loss_type"] = setup.loss_type
        if setup.loss_type == "luspo":
            settings["importance_sampling_level"] = "sequence"
    return {**settings, **overrides}


def build(setup: Setup, folder: Path, method: bool = True, trl: bool = False, reward_funcs=None, **overrides):
    """A trainer for `setup`: ours with the method on, ours with it off, or TRL's own (`trl=True`)."""
    path = checkpoint(folder.parent / "checkpoints", setup.family, setup.tools)
    settings = training_settings(setup, str(folder), **overrides)
    if trl:
        pass  # TRL's config has no method fields
    elif not method:
        settings.update(distill_coef=0.0, diversity_coef=0.0)
    else:
        if setup.guidance is not None and "guidance_scale" not in overrides:
            settings.setdefault("guidance", setup.guidance)
        if setup.teacher_is_checkpoint:
            settings["teacher_model"] = path
    if setup.algorithm == "grpo":
        trainer_class, config_class = (GRPOTrainer, GRPOConfig) if trl else (DiversityCFGTrainer, DiversityCFGConfig)
    else:
        trainer_class, config_class = (
            (RLOOTrainer, RLOOConfig) if trl else (DiversityCFGRLOOTrainer, DiversityCFGRLOOConfig)
        )
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGETS[setup.family]) if setup.lora else None
    tokenizer = build_tool_tokenizer() if setup.tools else build_tokenizer()
    trainer = trainer_class(
        model=model_argument(setup, path),
        reward_funcs=reward_funcs,
        args=config_class(**settings),
        train_dataset=prompts(setup.equal_prompt_lengths),
        processing_class=tokenizer,
        peft_config=lora,
        **({"tools": TOOLS} if setup.tools else {}),
    )
    if setup.tools:
        trainer._generate_single_turn = calls_a_tool(trainer._generate_single_turn, tokenizer)
    return trainer


def logged(trainer, key) -> list:
    return [entry[key] for entry in trainer.state.log_history if key in entry]


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: copy.deepcopy(p.detach()) for name, p in module.named_parameters()}
