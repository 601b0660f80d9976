"""Step time of `DiversityCFGTrainer` (full method) against plain `trl.GRPOTrainer`, on the default model, with a
per-component split of the step.

Both trainers are built once in this process, on the same model (SmolLM2-135M-Instruct, the embedded default), with
the same LoRA, prompts, batch and generation settings and seed; then they train alternately, `--rounds` rounds of
(`--steps-per-round` GRPO steps, `--steps-per-round` DiversityCFG steps), so that machine noise hits both alike.
Each round is one `trainer.train()` call with `max_steps=--steps-per-round` (the LoRA weights carry over between
rounds; the optimizer restarts, which does not change the cost of a step).

Two configurations (`--config`): `default-job`, the default job's LoRA (r=16 on every attention and MLP projection)
and 48 new tokens; `lora-qv8`, LoRA r=8 (alpha 16) on q_proj and v_proj only and 32 new tokens, where the base
model's frozen forwards weigh more against a cheap backward.

A step is timed from `on_step_begin` to `on_step_end`. The first step of each trainer is warm-up and is left out of
the medians. The split comes from timers wrapped around the trainers' own methods in this process (nothing in the
package is changed); indented parts are inside the part above them:

    generation            GRPOTrainer._generate: tokenising the prompts, sampling, decoding
      sampling            _generate_single_turn (the sampling itself)
    rewards               _calculate_rewards (the quality rewards; ours also the diversity reward)
      diversity_reward    _score_diversity (MiniLM embeddings of the batch)
    teacher_forward       CFGTeacher.hidden_states (the CFG teacher, no grad)
      teacher_contexts    its first forward: every distinct context once (the conditional prompts and the null
                          context), into a key-value cache
      teacher_completions its other forwards: every completion under its conditional context and under the null
                          context, both branches' rows in one batch
      teacher_rest        the rest of the call: the adapter switched off, eval mode (each mode switch re-kernelizes a
                          transformers model when `kernels` is installed), cache copies, the guidance arithmetic
    prepare_rest          the rest of _generate_and_score_completions: tensors, masks, advantages
    loss_forward          _compute_loss
      student_forward     the policy's forward inside it (_get_per_token_logps_and_entropies: fused head log-probs)
      distill_forward     chunked_token_divergence (student and teacher logits, the divergence)
      loss_rest           the rest: the GRPO loss on the log-probs, the distillation's reduction
    backward              accelerator.backward
      distill_backward    from the gradient reaching the per-token divergence to it reaching the student's hidden
                          states (tensor hooks; the autograd engine runs these newest nodes first)
      student_backward    the rest of the backward: the policy's, through the fused head and the model
    gather                every cross-process collective (accelerator.gather/reduce, gather, gather_object), wherever
                          it is called (one process here, so this is their overhead only)
    other                 the rest of the step: optimizer step, gradient clipping, bookkeeping

and, outside the timed step, right after each of ours (`--no-branches` turns it off): the teacher's conditional branch
alone and its null branch alone, each run as a one-branch teacher on that step's batch (`teacher_conditional_alone`,
`teacher_null_alone`), to show what each branch costs and what batching them saves.

The report ends with the floor: GRPO's step plus only the teacher's two forwards (`teacher_contexts` and
`teacher_completions`), as a ratio to GRPO's step, round by round; then plus the distillation and the diversity reward.
No trainer that runs this teacher can beat the first, whatever else it saves.

`--compare rloo` times the method on TRL's two algorithms instead: `DiversityCFGTrainer` (GRPO) against
`DiversityCFGRLOOTrainer` (RLOO), both with the full method and each algorithm's own defaults (RLOO's `beta = 0.05`
adds the reference model's forward for its KL penalty), as the reproduction trains them; the same timers apply,
since RLOO has the same method names.

Run:  HF_HUB_OFFLINE=1 python benchmarks/step_time.py [--config default-job|lora-qv8] [--compare rloo]
Writes benchmarks/results/step_time.json and .md (lora-qv8: step_time_lora_qv8.*; --compare rloo: step_time_rloo*.*).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from trl_diversity.defaults import DEFAULT_JOB_LORA

os.environ.setdefault("HF_HUB_OFFLINE", "1")

RESULTS_DIR = Path(__file__).resolve().parent / "results"
# Every timed part of a step, in table order (see the module docstring).
PARTS = (
    "generation",
    "sampling",
    "rewards",
    "diversity_reward",
    "teacher_forward",
    "teacher_contexts",
    "teacher_completions",
    "teacher_rest",
    "prepare_rest",
    "loss_forward",
    "student_forward",
    "distill_forward",
    "loss_rest",
    "backward",
    "distill_backward",
    "student_backward",
    "gather",
    "other",
)
# Measured outside the timed step, after each of the method's steps.
BRANCH_PARTS = ("teacher_conditional_alone", "teacher_null_alone")
# The two configurations: the default job's LoRA and length, and a small LoRA with short completions.
CONFIGS = {
    "default-job": {
        "lora": {**DEFAULT_JOB_LORA, "task_type": "CAUSAL_LM"},
        "max_completion_length": 48,
        "describe": "LoRA r=16 on every attention and MLP projection (the default job's)",
        "suffix": "",
    },
    "lora-qv8": {
        "lora": {"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"], "task_type": "CAUSAL_LM"},
        "max_completion_length": 32,
        "describe": "LoRA r=8 on q_proj and v_proj",
        "suffix": "_lora_qv8",
    },
}
LORA = CONFIGS["default-job"]["lora"]  # the default job's LoRA (trl_diversity.defaults)


class StepRecorder:
    """Collects per-step wall time and the time spent in each timed part of the step."""

    def __init__(self):
        self.label: str | None = None
        self.round = 0
        self.parts: dict[str, float] = defaultdict(float)
        self.steps: list[dict] = []
        self.branches = None  # a callable measuring the teacher's branches alone on this step's batch
        self._active: dict[str, int] = defaultdict(int)
        self._start = None

    def timed(self, part: str, fn):
        """`fn`, adding its wall time to `part` (a call nested in another call of the same part is not counted
        twice)."""

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            if self._active[part]:
                return fn(*args, **kwargs)
            self._active[part] += 1
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.parts[part] += time.perf_counter() - start
                self._active[part] -= 1

        return wrapper

    def active(self, part: str) -> bool:
        return self._active[part] > 0

    def begin(self):
        self.parts = defaultdict(float)
        self.branches = None
        self._cpu_start = time.process_time()
        self._start = time.perf_counter()

    def end(self, global_step: int):
        total = time.perf_counter() - self._start
        cpu = time.process_time() - self._cpu_start
        parts = dict(self.parts)
        prepare = parts.pop("prepare", 0.0)
        inside_prepare = sum(parts.get(p, 0.0) for p in ("generation", "rewards", "teacher_forward"))
        # `prepare` (GRPO's _generate_and_score_completions) holds generation, rewards and the teacher; the rest of
        # it is tensors, masks and advantages.
        parts["prepare_rest"] = max(prepare - inside_prepare, 0.0)
        parts["other"] = (
            total - max(prepare, inside_prepare) - parts.get("loss_forward", 0.0) - parts.get("backward", 0.0)
        )
        parts["loss_rest"] = (
            parts.get("loss_forward", 0.0) - parts.get("student_forward", 0.0) - parts.get("distill_forward", 0.0)
        )
        parts["student_backward"] = parts.get("backward", 0.0) - parts.get("distill_backward", 0.0)
        parts["teacher_rest"] = (
            parts.get("teacher_forward", 0.0)
            - parts.get("teacher_contexts", 0.0)
            - parts.get("teacher_completions", 0.0)
        )
        step = {
            "trainer": self.label,
            "round": self.round,
            "step": global_step,
            "total": total,
            "cpu": cpu,
            "load_1min": os.getloadavg()[0],
            **parts,
        }
        if self.branches is not None:  # outside the timed step
            step.update(self.branches())
            self.branches = None
        self.steps.append(step)


# The two trainers each comparison times, first the baseline, and how the tables name them.
PAIRS = {"trl-grpo": ("grpo", "ours"), "rloo": ("grpo", "rloo")}
TITLES = {
    "trl-grpo": ("GRPOTrainer", "DiversityCFGTrainer"),
    "rloo": ("DiversityCFGTrainer", "DiversityCFGRLOOTrainer"),  # both with the method on
}
METHOD = dict(distill_coef=1.0, diversity_coef=15.0, guidance_scale=3.0)


def make_callback(recorder: StepRecorder):
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            recorder.begin()

        def on_step_end(self, args, state, control, **kwargs):
            recorder.end(state.global_step)  # already counts this step

    return StepTimer()


def instrument(trainer, recorder: StepRecorder, branches: bool = True):
    """Wrap the trainer's own methods (on this instance only) with timers."""
    for name, part in (
        ("_generate", "generation"),
        ("_generate_single_turn", "sampling"),
        ("_calculate_rewards", "rewards"),
        ("_score_diversity", "diversity_reward"),  # ours only
        ("_generate_and_score_completions", "prepare"),
        ("_compute_loss", "loss_forward"),
    ):
        if hasattr(trainer, name):
            setattr(trainer, name, recorder.timed(part, getattr(trainer, name)))
    logps = trainer._get_per_token_logps_and_entropies
    timed_logps = recorder.timed("student_forward", logps)
    # The policy's forward for the loss; RLOO's no-grad forwards while preparing the batch stay in prepare_rest.
    trainer._get_per_token_logps_and_entropies = functools.wraps(logps)(
        lambda *args, **kwargs: (timed_logps if recorder.active("loss_forward") else logps)(*args, **kwargs)
    )
    accelerator = trainer.accelerator
    accelerator.backward = recorder.timed("backward", accelerator.backward)
    for name in ("gather", "gather_for_metrics", "reduce"):
        setattr(accelerator, name, recorder.timed("gather", getattr(accelerator, name)))
    teacher = getattr(trainer, "cfg_teacher", None)  # None for plain GRPO
    if teacher is not None:
        teacher.hidden_states = timed_teacher(trainer, teacher, recorder, branches)


def instrument_module_collectives(recorder: StepRecorder):
    """The collectives TRL's trainers and the group rewards call as functions, not through the accelerator."""
    import accelerate.utils
    import trl.trainer.grpo_trainer as grpo_module
    import trl.trainer.rloo_trainer as rloo_module

    for module in (grpo_module, rloo_module, accelerate.utils):  # group.py imports gather_object at call time
        for name in ("gather", "gather_object"):
            if hasattr(module, name):
                setattr(module, name, recorder.timed("gather", getattr(module, name)))


def timed_teacher(trainer, teacher, recorder: StepRecorder, branches: bool):
    """`teacher.hidden_states`, timed as a whole and forward by forward; with `branches`, it also leaves the step a
    measurement of each branch alone (run after the step, outside its time)."""
    import torch

    hidden_states = teacher.hidden_states

    @functools.wraps(hidden_states)
    def wrapper(output, conversational, prompts=None):
        model = teacher.model if teacher.model is not None else trainer.model
        while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
            model = model.module
        durations: list[float] = []
        started: list[float] = []

        def before(_module, _args, _kwargs):
            started.append(time.perf_counter())

        def after(_module, _args, _kwargs, _output):
            durations.append(time.perf_counter() - started.pop())

        handles = [
            model.register_forward_pre_hook(before, with_kwargs=True),
            model.register_forward_hook(after, with_kwargs=True),
        ]
        start = time.perf_counter()
        try:
            return hidden_states(output, conversational, prompts)
        finally:
            recorder.parts["teacher_forward"] += time.perf_counter() - start
            for handle in handles:
                handle.remove()
            # The first forward encodes the distinct contexts; the others run the completions.
            recorder.parts["teacher_contexts"] += sum(durations[:1])
            recorder.parts["teacher_completions"] += sum(durations[1:])
            if branches and trainer.model.training:
                recorder.branches = functools.partial(
                    time_branches_alone, teacher, hidden_states, output, conversational, prompts
                )

    return wrapper


def time_branches_alone(teacher, hidden_states, output: dict, conversational: bool, prompts) -> dict[str, float]:
    """The teacher's cost with its conditional branch only, then with its null branch only, on one batch: a
    one-branch guidance (no negative) on the rows' own prompts, then on the null context in every row."""
    import torch

    from trl_diversity.guidance.spec import GuidanceSpec

    spec = teacher.spec
    null_ids = teacher.unconditional_ids(conversational)
    prompt_ids = output["prompt_ids"]
    null_output = {
        **output,
        "prompt_ids": torch.tensor([null_ids] * len(prompt_ids), dtype=prompt_ids.dtype, device=prompt_ids.device),
        "prompt_mask": torch.ones((len(prompt_ids), len(null_ids)), dtype=torch.long, device=prompt_ids.device),
    }
    times = {}
    teacher.spec = GuidanceSpec(())
    try:
        for part, batch in (("teacher_conditional_alone", output), ("teacher_null_alone", null_output)):
            start = time.perf_counter()
            hidden_states(batch, conversational, prompts)
            times[part] = time.perf_counter() - start
    finally:
        teacher.spec = spec
    return times


def instrument_distillation(recorder: StepRecorder):
    """Time the distillation's forward (as the trainer calls it) and, through tensor hooks, its backward."""
    import trl_diversity.trainer.method as ours

    divergence = recorder.timed("distill_forward", ours.chunked_token_divergence)

    @functools.wraps(divergence)
    def wrapper(student_hidden, *args, **kwargs):
        result = divergence(student_hidden, *args, **kwargs)
        if result.requires_grad and student_hidden.requires_grad:
            reached: list[float] = []
            result.register_hook(lambda _grad: reached.append(time.perf_counter()))

            def arrived(_grad):
                if reached:
                    recorder.parts["distill_backward"] += time.perf_counter() - reached.pop()

            student_hidden.register_hook(arrived)
        return result

    ours.chunked_token_divergence = wrapper


def length_reward(completions, **kwargs):
    """The cheap reward plain GRPO needs: completion length / 100."""
    from trl_diversity.rewards.text import completion_text

    return [len(completion_text(c)) / 100 for c in completions]


def build_trainers(args, recorder: StepRecorder, output_root: str):
    import torch
    from peft import LoraConfig
    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from trl_diversity import DiversityCFGConfig, DiversityCFGTrainer
    from trl_diversity.data import load_prompts
    from trl_diversity.defaults import default_model_path

    model_path = str(default_model_path())
    dataset = load_prompts("train", conversational=True)
    common = dict(
        per_device_train_batch_size=args.batch_size,
        num_generations=args.num_generations,
        max_completion_length=args.max_completion_length,
        temperature=1.0,
        learning_rate=2.0e-4,
        max_steps=args.steps_per_round,
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        seed=args.seed,
    )
    trainers = {}

    def build(label: str, trainer_class, config_class, config: dict | None = None, **kwargs):
        torch.manual_seed(args.seed)
        trainers[label] = trainer_class(
            model=model_path,
            args=config_class(output_dir=os.path.join(output_root, label), **common, **(config or {})),
            train_dataset=dataset,
            processing_class=AutoTokenizer.from_pretrained(model_path, padding_side="left"),
            peft_config=LoraConfig(**CONFIGS[args.config]["lora"]),
            callbacks=[make_callback(recorder)],
            **kwargs,
        )

    if args.compare == "trl-grpo":
        build("grpo", GRPOTrainer, GRPOConfig, reward_funcs=length_reward)
        build("ours", DiversityCFGTrainer, DiversityCFGConfig, config=METHOD)
    else:
        from trl_diversity import DiversityCFGRLOOConfig, DiversityCFGRLOOTrainer

        build("grpo", DiversityCFGTrainer, DiversityCFGConfig, config=METHOD)
        build("rloo", DiversityCFGRLOOTrainer, DiversityCFGRLOOConfig, config=METHOD)
    for trainer in trainers.values():
        instrument(trainer, recorder, branches=args.branches)
    instrument_module_collectives(recorder)
    instrument_distillation(recorder)
    return trainers


def summarize(steps: list[dict], label: str) -> dict:
    rows = [s for s in steps if s["trainer"] == label]
    kept = rows[1:]  # the first step of each trainer is warm-up
    lengths = [s["mean_completion_length"] for s in kept if "mean_completion_length" in s]
    branches = {
        part: statistics.median(values) for part in BRANCH_PARTS if (values := [s[part] for s in kept if part in s])
    }
    return {
        "steps_measured": len(kept),
        "warmup_step_s": rows[0]["total"] if rows else None,
        "median_step_s": statistics.median(s["total"] for s in kept),
        "mean_step_s": statistics.fmean(s["total"] for s in kept),
        "min_step_s": min(s["total"] for s in kept),
        "max_step_s": max(s["total"] for s in kept),
        "median_step_cpu_s": statistics.median(s["cpu"] for s in kept),
        "median_parts_s": {part: statistics.median(s.get(part, 0.0) for s in kept) for part in PARTS},
        **({"median_branches_alone_s": branches} if branches else {}),
        "mean_completion_length": statistics.fmean(lengths) if lengths else None,
        "mean_load_1min": statistics.fmean(s["load_1min"] for s in kept),
    }


def per_round_ratios(
    steps: list[dict], rounds: int, key: str = "total", pair: tuple[str, str] = PAIRS["trl-grpo"]
) -> list[float]:
    """Ratio candidate / baseline (ours / GRPO by default) of the median step within each round (warm-up steps left
    out)."""
    kept = {label: [s for s in steps if s["trainer"] == label][1:] for label in pair}
    ratios = []
    for round_index in range(rounds):
        medians = [
            statistics.median(values)
            if (values := [s.get(key, 0.0) for s in kept[label] if s["round"] == round_index])
            else None
            for label in pair
        ]
        if None not in medians and medians[0] > 0:
            ratios.append(medians[1] / medians[0])
    return ratios


def floors(steps: list[dict], rounds: int, pair: tuple[str, str] = PAIRS["trl-grpo"]) -> dict:
    """Lower bounds on the ratio, per round as the ratio itself: the baseline's step plus only the candidate's teacher
    forwards (the model's own two forwards, nothing around them), then plus the distillation (forward and backward)
    and the diversity reward too. A candidate that runs the same teacher forwards cannot do better than the first."""
    extra = {
        "teacher": ("teacher_contexts", "teacher_completions"),
        "teacher_distillation_diversity": (
            "teacher_contexts",
            "teacher_completions",
            "distill_forward",
            "distill_backward",
            "diversity_reward",
        ),
    }
    kept = {label: [s for s in steps if s["trainer"] == label][1:] for label in pair}
    result = {}
    for name, parts in extra.items():
        per_round = []
        for round_index in range(rounds):
            base = [s["total"] for s in kept[pair[0]] if s["round"] == round_index]
            added = [sum(s.get(p, 0.0) for p in parts) for s in kept[pair[1]] if s["round"] == round_index]
            if base and added:
                median = statistics.median(base)
                per_round.append((median + statistics.median(added)) / median)
        result[name] = {"per_round": per_round, "median": statistics.median(per_round) if per_round else None}
    return result


def attach_completion_lengths(trainer, recorder: StepRecorder, label: str, round_index: int):
    """Copy each step's mean completion length (GRPO logs it) onto the recorded step."""
    lengths = {
        entry["step"]: entry["completions/mean_length"]
        for entry in trainer.state.log_history
        if "completions/mean_length" in entry
    }
    for step in recorder.steps:
        if step["trainer"] == label and step["round"] == round_index and step["step"] in lengths:
            step["mean_completion_length"] = lengths[step["step"]]


# The split's rows: (part, label, indented).
SPLIT_ROWS = (
    ("generation", "generation (tokenising, sampling, decoding)", False),
    ("sampling", "sampling", True),
    ("rewards", "rewards", False),
    ("diversity_reward", "diversity reward (MiniLM embeddings)", True),
    ("teacher_forward", "CFG teacher forward (no grad)", False),
    ("teacher_contexts", "distinct contexts once: the conditional prompts and the null context", True),
    ("teacher_completions", "every completion under its conditional and under the null context, one batch", True),
    ("teacher_rest", "rest of the teacher call (adapter off, eval mode, cache copies, guidance)", True),
    ("prepare_rest", "rest of the batch preparation (tensors, advantages)", False),
    ("loss_forward", "loss forward", False),
    ("student_forward", "student forward (fused-head log-probs)", True),
    ("distill_forward", "distillation forward (student and teacher logits, divergence)", True),
    ("loss_rest", "rest of the loss", True),
    ("backward", "backward", False),
    ("distill_backward", "distillation backward", True),
    ("student_backward", "student backward (the rest)", True),
    ("gather", "gather (every collective, inside the parts above)", False),
    ("other", "other (optimizer step, bookkeeping)", False),
)


def config_name(config: dict) -> str:
    """The configuration a result was run with (results written before `--config` existed are the default job's)."""
    return config.get("config", "default-job")


def markdown(result: dict) -> str:
    config = result["config"]
    compare = config.get("compare", "trl-grpo")  # results written before --compare existed are the default
    pair = PAIRS[compare]
    grpo, ours = result[pair[0]], result[pair[1]]  # the baseline and the candidate
    first, second = TITLES[compare]
    setup = CONFIGS[config_name(config)]
    if compare == "trl-grpo":
        settings = "Ours: distill_coef=1, diversity_coef=15, guidance_scale=3, reverse KL. GRPO: one reward, completion length / 100."
    else:
        settings = (
            "Both with the method on: distill_coef=1, diversity_coef=15, guidance_scale=3, reverse KL, each "
            "algorithm's own defaults otherwise (GRPO beta=0; RLOO beta=0.05, the reference model's forward for its "
            "KL penalty). The JSON's `grpo` is DiversityCFGTrainer here. `prepare_rest` includes RLOO's two no-grad "
            "forwards, the policy's log-probabilities and the reference model's."
        )
    lines = [
        f"# Step time: {second} vs {first}" + (f" ({config_name(config)})" if "config" in config else ""),
        "",
        f"Machine: {result['machine']}. Model: SmolLM2-135M-Instruct + {setup['describe']}, "
        f"{config['batch_size']} completions per step ({config['num_generations']} per prompt), at most "
        f"{config['max_completion_length']} new tokens, temperature 1.0. {settings}",
        f"{config['rounds']} alternating rounds of {config['steps_per_round']} step(s) per trainer; the first step of "
        "each trainer is left out as warm-up.",
        "",
        f"| | {first} | {second} |",
        "|---|---|---|",
        f"| median step, wall (s) | {grpo['median_step_s']:.2f} | {ours['median_step_s']:.2f} |",
        f"| median step, process CPU time (s) | {grpo['median_step_cpu_s']:.2f} | {ours['median_step_cpu_s']:.2f} |",
        f"| mean step, wall (s) | {grpo['mean_step_s']:.2f} | {ours['mean_step_s']:.2f} |",
        f"| min / max step, wall (s) | {grpo['min_step_s']:.2f} / {grpo['max_step_s']:.2f} | "
        f"{ours['min_step_s']:.2f} / {ours['max_step_s']:.2f} |",
        f"| steps measured | {grpo['steps_measured']} | {ours['steps_measured']} |",
        f"| mean completion length (tokens) | {_fmt(grpo['mean_completion_length'])} | "
        f"{_fmt(ours['mean_completion_length'])} |",
        f"| mean 1-min load average during steps | {grpo['mean_load_1min']:.2f} | {ours['mean_load_1min']:.2f} |",
        "",
        f"**Ratio {second} / {first}, median wall step: {result['ratio_median']:.2f}x**"
        + (" (target <= 1.15x). " if compare == "trl-grpo" else ". ")
        + f"Process CPU time: {result['ratio_median_cpu']:.2f}x. Per-round ratios of the medians: "
        f"{', '.join(f'{r:.2f}' for r in result['ratio_per_round'])} (median {_fmt(result['ratio_per_round_median'], 2)}).",
        "",
        "## Where the step goes",
        "",
        "Median seconds per step; indented parts are inside the part above them.",
        "",
        f"| part | {first} | {second} | difference |",
        "|---|---|---|---|",
    ]
    for part, label, indented in SPLIT_ROWS:
        base, candidate = _part(grpo, part), _part(ours, part)
        if base is None and candidate is None:
            continue  # not measured by the version of the script that wrote this result
        difference = None if base is None or candidate is None else candidate - base
        name = f"&nbsp;&nbsp;{label}" if indented else label
        lines.append(f"| {name} | {_fmt(base, 2)} | {_fmt(candidate, 2)} | {_signed(difference)} |")
    lines += [
        f"| **step** | {grpo['median_step_s']:.2f} | {ours['median_step_s']:.2f} | "
        f"{_signed(ours['median_step_s'] - grpo['median_step_s'])} |",
        "",
        "Parts are medians over steps, so they need not add up to the median step. `gather` counts every collective "
        "(one process here: their overhead only); the distillation backward runs from the gradient reaching the "
        "per-token divergence to it reaching the student's hidden states.",
    ]
    branches = ours.get("median_branches_alone_s")
    if branches:
        conditional, null = branches["teacher_conditional_alone"], branches["teacher_null_alone"]
        lines += [
            "",
            f"The teacher's branches, each alone on the same batch (after each of {second}'s steps, outside its time; "
            f"medians): conditional {conditional:.2f} s, null {null:.2f} s, {conditional + null:.2f} s together, "
            f"against {ours['median_parts_s']['teacher_forward']:.2f} s for both in one batch in the step.",
        ]
    floor = result.get("floor")
    if floor and compare == "trl-grpo":
        teacher, method = floor["teacher"], floor["teacher_distillation_diversity"]
        lines += [
            "",
            f"**Floor.** {first}'s step plus only {second}'s two teacher forwards (contexts and completions): "
            f"{_fmt(teacher['median'], 2)}x "
            f"(per round {', '.join(f'{r:.2f}' for r in teacher['per_round'])}); plus the distillation (forward and "
            f"backward) and the diversity reward: {_fmt(method['median'], 2)}x "
            f"(per round {', '.join(f'{r:.2f}' for r in method['per_round'])}). A trainer that runs this teacher "
            "cannot come below the first, whatever else it saves; one that also distils and scores diversity this way "
            "cannot come below the second.",
        ]
    return "\n".join(lines) + "\n"


def _part(summary: dict, part: str) -> float | None:
    return summary["median_parts_s"].get(part)


def _fmt(value, digits: int = 1):
    return "n/a" if value is None else f"{value:.{digits}f}"


def _signed(value, digits: int = 2):
    return "n/a" if value is None else f"{value:+.{digits}f}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--config",
        choices=list(CONFIGS),
        default="default-job",
        help="default-job: the default job's LoRA and 48 tokens; lora-qv8: LoRA r=8 on q/v and 32 tokens",
    )
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (the baseline, then the other)")
    parser.add_argument("--steps-per-round", type=int, default=3, help="optimizer steps per trainer per round")
    parser.add_argument("--batch-size", type=int, default=8, help="per_device_train_batch_size (completions)")
    parser.add_argument("--num-generations", type=int, default=4)
    parser.add_argument(
        "--max-completion-length", type=int, default=None, help="default: the configuration's (48 or 32)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--compare",
        choices=list(PAIRS),
        default="trl-grpo",
        help="trl-grpo: DiversityCFGTrainer against plain GRPOTrainer; rloo: the method on RLOO against on GRPO",
    )
    parser.add_argument(
        "--no-branches",
        dest="branches",
        action="store_false",
        help="do not time the teacher's branches alone after each step",
    )
    parser.add_argument("--output", type=Path, default=None, help="default: results/step_time[_rloo][_lora_qv8].json")
    args = parser.parse_args(argv)
    if args.max_completion_length is None:
        args.max_completion_length = CONFIGS[args.config]["max_completion_length"]
    if args.output is None:
        name = "step_time" + ("" if args.compare == "trl-grpo" else "_rloo") + CONFIGS[args.config]["suffix"]
        args.output = RESULTS_DIR / f"{name}.json"
    pair = PAIRS[args.compare]

    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    started = time.perf_counter()
    recorder = StepRecorder()
    with tempfile.TemporaryDirectory() as output_root:
        trainers = build_trainers(args, recorder, output_root)
        setup_s = time.perf_counter() - started
        print(f"built both trainers in {setup_s:.1f} s", flush=True)
        for round_index in range(args.rounds):
            for label in pair:
                recorder.label, recorder.round = label, round_index
                torch.manual_seed(args.seed + round_index)  # same sampling RNG state for both trainers each round
                trainers[label].train()
                attach_completion_lengths(trainers[label], recorder, label, round_index)
                done = [s for s in recorder.steps if s["trainer"] == label and s["round"] == round_index]
                print(
                    f"round {round_index} {label:4s}: "
                    + ", ".join(f"{s['total']:.2f}s" for s in done)
                    + f"  (completion length {', '.join(_fmt(s.get('mean_completion_length')) for s in done)})",
                    flush=True,
                )

    result = {
        "benchmark": "step_time",
        "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads",
        "config": {
            "config": args.config,
            "rounds": args.rounds,
            "steps_per_round": args.steps_per_round,
            "batch_size": args.batch_size,
            "num_generations": args.num_generations,
            "max_completion_length": args.max_completion_length,
            "seed": args.seed,
            "lora": CONFIGS[args.config]["lora"],
            "compare": args.compare,
            "pair": list(pair),
            "method": {**METHOD, "distill_divergence": "reverse_kl"},
            "grpo_reward": "completion length / 100" if args.compare == "trl-grpo" else None,
        },
        "setup_s": setup_s,
        **{label: summarize(recorder.steps, label) for label in pair},
        "steps": recorder.steps,
        "total_wall_s": time.perf_counter() - started,
    }
    baseline, candidate = (result[label] for label in pair)
    result["ratio_median"] = candidate["median_step_s"] / baseline["median_step_s"]
    result["ratio_median_cpu"] = candidate["median_step_cpu_s"] / baseline["median_step_cpu_s"]
    result["ratio_per_round"] = per_round_ratios(recorder.steps, args.rounds, pair=pair)
    result["ratio_per_round_median"] = (
        statistics.median(result["ratio_per_round"]) if result["ratio_per_round"] else None
    )
    result["floor"] = floors(recorder.steps, args.rounds, pair=pair)

    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(result)
    args.output.with_suffix(".md").write_text(table)
    print()
    print(table)
    print(f"wrote {args.output} and {args.output.with_suffix('.md')} ({result['total_wall_s']:.0f} s in all)")
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
