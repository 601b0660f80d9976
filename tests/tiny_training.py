"""The one helper for tiny training runs in the tests: the arguments, the trainers built on a tiny checkpoint, the
command line of a tiny `train`, and the comparisons of two runs (resumed against uninterrupted, ours against TRL's)."""

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification, TrainerCallback

from trl_diversity import DiversityCFGConfig, DiversityCFGRLOOConfig, DiversityCFGRLOOTrainer, DiversityCFGTrainer
from trl_diversity.data import load_prompts

# A few fast steps on a tiny model on CPU (GRPOConfig fields only: GRPOConfig(**TINY_RUN) works too).
TINY_RUN = dict(
    use_cpu=True,
    bf16=False,
    max_steps=3,
    per_device_train_batch_size=8,
    num_generations=4,
    max_completion_length=8,
    learning_rate=1e-2,
    logging_steps=1,
    report_to="none",
    save_strategy="no",
    gradient_checkpointing=False,
    seed=0,
)


def make_args(tmp_path, **overrides):
    return DiversityCFGConfig(output_dir=str(tmp_path / "out"), **{**TINY_RUN, **overrides})


def make_trainer(checkpoint, tmp_path, conversational=True, prompts=16, model=None, **overrides):
    return DiversityCFGTrainer(
        model=model if model is not None else checkpoint,
        args=make_args(tmp_path, **{k: v for k, v in overrides.items() if k not in ("peft_config", "reward_funcs")}),
        train_dataset=load_prompts("train", conversational=conversational, limit=prompts),
        processing_class=AutoTokenizer.from_pretrained(checkpoint),
        peft_config=overrides.get("peft_config"),
        reward_funcs=overrides.get("reward_funcs"),
    )


def logged(trainer, key):
    return [entry[key] for entry in trainer.state.log_history if key in entry]


def next_token_logits(net, context, completion):
    """Logits predicting each completion token, from one unpadded sequence."""
    logits = net(input_ids=torch.cat([context, completion])[None]).logits[0]
    return logits[len(context) - 1 : len(context) - 1 + len(completion)]


RLOO_RUN = {**TINY_RUN, "num_generations": 4}


def rloo_args(tmp_path, **overrides):
    return DiversityCFGRLOOConfig(output_dir=str(tmp_path / "out"), **{**RLOO_RUN, **overrides})


def rloo_trainer(checkpoint, tmp_path, model=None, reward_funcs=None, train_dataset=None, peft_config=None, **over):
    return DiversityCFGRLOOTrainer(
        model=model if model is not None else checkpoint,
        reward_funcs=reward_funcs,
        args=rloo_args(tmp_path, **over),
        train_dataset=train_dataset if train_dataset is not None else load_prompts("train", limit=16),
        eval_dataset=load_prompts("eval", limit=4),
        processing_class=AutoTokenizer.from_pretrained(checkpoint),
        peft_config=peft_config,
    )


class StopAt(TrainerCallback):
    """Ends training after a given step, as an interruption would (the checkpoint of that step is saved first)."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_save = True
            control.should_training_stop = True


def final_weights(trainer):
    return {name: p.detach().clone() for name, p in trainer.model.named_parameters()}


def run_interrupted_and_resumed(make, root, settings, stop: int = 2):
    """`make(folder, **settings)` trained through in `root/a`; trained to step `stop` in `root/b`, then resumed from
    that step's checkpoint by a new trainer. Returns (uninterrupted, interrupted, resumed)."""
    uninterrupted = make(root / "a", **settings)
    uninterrupted.train()
    interrupted = make(root / "b", **settings)
    interrupted.add_callback(StopAt(stop))
    interrupted.train()
    assert interrupted.state.global_step == stop
    resumed = make(root / "b", **settings)
    resumed.train(resume_from_checkpoint=str(root / "b" / "out" / f"checkpoint-{stop}"))
    assert resumed.state.global_step == settings["max_steps"]
    return uninterrupted, interrupted, resumed


def assert_same_weights(trainer, expected):
    got = final_weights(trainer)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], msg=f"{name} differs after resuming")


TIMING = ("runtime", "per_second", "step_time")  # wall-clock entries, different between any two runs


def brevity(completions, **kwargs):
    return [-len(str(c)) / 100 for c in completions]


def always_none(completions, **kwargs):
    return [None] * len(completions)


def reward_model(tokenizer):
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        num_labels=1,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForSequenceClassification(config)


def assert_same_run(theirs, ours, name: str) -> None:
    """The same logged metric names and values at every step (wall-clock entries aside) and the same final weights."""
    assert [entry.keys() for entry in ours.state.log_history] == [entry.keys() for entry in theirs.state.log_history]
    for expected, got in zip(theirs.state.log_history, ours.state.log_history):
        for key, value in expected.items():
            if not any(word in key for word in TIMING):
                assert got[key] == value, f"{key}: {name} logged {value}, ours {got[key]}"
    for (parameter, p), q in zip(theirs.model.named_parameters(), ours.model.parameters()):
        assert torch.equal(p, q), f"{parameter} trained differently"


def tiny_train_argv(checkpoint, output_dir, *extra: str) -> list[str]:
    """`trl-diversity train` flags for one step of a tiny model with a small LoRA and no report, then `extra` (a flag
    given again in `extra` overrides, as argparse keeps the last value)."""
    return [
        "--model_name_or_path",
        str(checkpoint),
        "--output_dir",
        str(output_dir),
        "--max_steps",
        "1",
        "--per_device_train_batch_size",
        "4",
        "--max_completion_length",
        "8",
        "--lora_target_modules",
        "q_proj",
        "v_proj",
        "--report_prompts",
        "0",
        *extra,
    ]
