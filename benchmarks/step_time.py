"""Step time of `DiversityCFGTrainer` (full method) against plain `trl.GRPOTrainer`, on the default model.

Both trainers are built once in this process, on the same model (SmolLM2-135M-Instruct, the embedded default), with
the same LoRA, prompts, batch and generation settings and seed; then they train alternately, `--rounds` rounds of
(`--steps-per-round` GRPO steps, `--steps-per-round` DiversityCFG steps), so that machine noise hits both alike.
Each round is one `trainer.train()` call with `max_steps=--steps-per-round` (the LoRA weights carry over between
rounds; the optimizer restarts, which does not change the cost of a step).

A step is timed from `on_step_begin` to `on_step_end` (generation, rewards, teacher, forward, backward and the
optimizer step). The first step of each trainer is warm-up and is left out of the medians. A breakdown comes from
timers wrapped around the trainers' own methods in this process (nothing in the package is changed):

    generation       GRPOTrainer._generate (sampling the completions)
    rewards          GRPOTrainer._calculate_rewards (ours: the diversity reward, i.e. MiniLM embeddings)
    teacher_forward  CFGTeacher.hidden_states (CFG teacher, conditional + unconditional pass)
    loss_forward     _compute_loss (student forward, GRPO loss; ours also the distillation loss)
    distill_forward  chunked_token_divergence forward (part of loss_forward)
    backward         accelerator.backward (ours includes distill_backward)
    distill_backward ChunkedDivergenceFunction.backward (part of backward)
    prepare_rest     the rest of _generate_and_score_completions: tokenising, decoding, advantages
    other            the rest of the step: optimizer step, gradient clipping, bookkeeping

`--compare rloo` times the method on TRL's two algorithms instead: `DiversityCFGTrainer` (GRPO) against
`DiversityCFGRLOOTrainer` (RLOO), both with the full method and each algorithm's own defaults (RLOO's `beta = 0.05`
adds the reference model's forward for its KL penalty), as the reproduction trains them; the same timers apply,
since RLOO has the same method names.

Run:  HF_HUB_OFFLINE=1 python benchmarks/step_time.py [--rounds 3] [--steps-per-round 3] [--compare rloo]
Writes benchmarks/results/step_time.json and step_time.md (with --compare rloo: step_time_rloo.json and .md).
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
PARTS = (
    "generation",
    "rewards",
    "teacher_forward",
    "prepare_rest",
    "loss_forward",
    "distill_forward",
    "backward",
    "distill_backward",
    "other",
)
# The default job's LoRA (trl_diversity.defaults), so the figures are the default job's.
LORA = {**DEFAULT_JOB_LORA, "task_type": "CAUSAL_LM"}


class StepRecorder:
    """Collects per-step wall time and the time spent in each timed part of the step."""

    def __init__(self):
        self.label: str | None = None
        self.round = 0
        self.parts: dict[str, float] = defaultdict(float)
        self.steps: list[dict] = []
        self._start = None

    def timed(self, part: str, fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.parts[part] += time.perf_counter() - start

        return wrapper

    def begin(self):
        self.parts = defaultdict(float)
        self._cpu_start = time.process_time()
        self._start = time.perf_counter()

    def end(self, global_step: int):
        total = time.perf_counter() - self._start
        cpu = time.process_time() - self._cpu_start
        parts = dict(self.parts)
        prepare = parts.pop("prepare", 0.0)
        inside_prepare = sum(parts.get(p, 0.0) for p in ("generation", "rewards", "teacher_forward"))
        # `prepare` (GRPO's _generate_and_score_completions) holds generation, rewards and the teacher; the rest of
        # it is tokenising, decoding and advantages.
        parts["prepare_rest"] = max(prepare - inside_prepare, 0.0)
        parts["other"] = (
            total - max(prepare, inside_prepare) - parts.get("loss_forward", 0.0) - parts.get("backward", 0.0)
        )
        self.steps.append(
            {
                "trainer": self.label,
                "round": self.round,
                "step": global_step,
                "total": total,
                "cpu": cpu,
                "load_1min": os.getloadavg()[0],
                **parts,
            }
        )


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


def instrument(trainer, recorder: StepRecorder):
    """Wrap the trainer's own methods (on this instance only) with timers."""
    for name, part in (
        ("_generate", "generation"),
        ("_calculate_rewards", "rewards"),
        ("_generate_and_score_completions", "prepare"),
        ("_compute_loss", "loss_forward"),
    ):
        setattr(trainer, name, recorder.timed(part, getattr(trainer, name)))
    teacher = getattr(trainer, "cfg_teacher", None)  # None for plain GRPO
    if teacher is not None:
        teacher.hidden_states = recorder.timed("teacher_forward", teacher.hidden_states)
    trainer.accelerator.backward = recorder.timed("backward", trainer.accelerator.backward)


def instrument_distillation(recorder: StepRecorder):
    """Time the distillation kernel's forward (as the trainer calls it) and its backward."""
    from trl.kernels.chunked_divergence import ChunkedDivergenceFunction

    import trl_diversity.trainer.method as ours

    ours.chunked_token_divergence = recorder.timed("distill_forward", ours.chunked_token_divergence)
    ChunkedDivergenceFunction.backward = staticmethod(
        recorder.timed("distill_backward", ChunkedDivergenceFunction.backward)
    )


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
            peft_config=LoraConfig(**LORA),
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
        instrument(trainer, recorder)
    instrument_distillation(recorder)
    return trainers


def summarize(steps: list[dict], label: str) -> dict:
    rows = [s for s in steps if s["trainer"] == label]
    kept = rows[1:]  # the first step of each trainer is warm-up
    lengths = [s["mean_completion_length"] for s in kept if "mean_completion_length" in s]
    return {
        "steps_measured": len(kept),
        "warmup_step_s": rows[0]["total"] if rows else None,
        "median_step_s": statistics.median(s["total"] for s in kept),
        "mean_step_s": statistics.fmean(s["total"] for s in kept),
        "min_step_s": min(s["total"] for s in kept),
        "max_step_s": max(s["total"] for s in kept),
        "median_step_cpu_s": statistics.median(s["cpu"] for s in kept),
        "median_parts_s": {part: statistics.median(s.get(part, 0.0) for s in kept) for part in PARTS},
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
            if (values := [s[key] for s in kept[label] if s["round"] == round_index])
            else None
            for label in pair
        ]
        if None not in medians:
            ratios.append(medians[1] / medians[0])
    return ratios


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


def markdown(result: dict) -> str:
    config = result["config"]
    compare = config.get("compare", "trl-grpo")  # results written before --compare existed are the default
    pair = PAIRS[compare]
    grpo, ours = result[pair[0]], result[pair[1]]  # the baseline and the candidate
    first, second = TITLES[compare]
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
        f"# Step time: {second} vs {first}",
        "",
        f"Machine: {result['machine']}. Model: SmolLM2-135M-Instruct + LoRA r=16 (the default job's LoRA), "
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
    ]
    for part in PARTS:
        lines.append(
            f"| {part} (median s) | {grpo['median_parts_s'][part]:.2f} | {ours['median_parts_s'][part]:.2f} |"
        )
    lines += [
        "",
        f"**Ratio {second} / {first}, median wall step: {result['ratio_median']:.2f}x**"
        + (" (target <= 1.3x). " if compare == "trl-grpo" else ". ")
        + f"Process CPU time: {result['ratio_median_cpu']:.2f}x. Per-round ratios of the medians: "
        f"{', '.join(f'{r:.2f}' for r in result['ratio_per_round'])} (median {_fmt(result['ratio_per_round_median'], 2)}).",
        "",
        "Parts are medians over steps, so they need not add up to the median step. `distill_forward` is inside "
        "`loss_forward` and `distill_backward` inside `backward`; `prepare_rest` is the rest of "
        "`_generate_and_score_completions` (tokenising, decoding, advantages); `other` is the optimizer step and the "
        "trainer's bookkeeping.",
    ]
    return "\n".join(lines) + "\n"


def _fmt(value, digits: int = 1):
    return "n/a" if value is None else f"{value:.{digits}f}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (the baseline, then the other)")
    parser.add_argument("--steps-per-round", type=int, default=3, help="optimizer steps per trainer per round")
    parser.add_argument("--batch-size", type=int, default=8, help="per_device_train_batch_size (completions)")
    parser.add_argument("--num-generations", type=int, default=4)
    parser.add_argument("--max-completion-length", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--compare",
        choices=list(PAIRS),
        default="trl-grpo",
        help="trl-grpo: DiversityCFGTrainer against plain GRPOTrainer; rloo: the method on RLOO against on GRPO",
    )
    parser.add_argument("--output", type=Path, default=None, help="default: results/step_time[_rloo].json")
    args = parser.parse_args(argv)
    if args.output is None:
        args.output = RESULTS_DIR / ("step_time.json" if args.compare == "trl-grpo" else "step_time_rloo.json")
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
            "rounds": args.rounds,
            "steps_per_round": args.steps_per_round,
            "batch_size": args.batch_size,
            "num_generations": args.num_generations,
            "max_completion_length": args.max_completion_length,
            "seed": args.seed,
            "lora": LORA,
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
