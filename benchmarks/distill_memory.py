"""Peak memory and time of the CFG-distillation loss at a Qwen2-sized vocabulary: chunked kernel vs. full logits.

Two ways to compute the same loss, forward and backward, on the same inputs:

- chunked: what the trainer runs. The teacher's conditional and unconditional hidden states are combined first
  (`guidance.guide`, valid because the LM head is linear), then `divergence.chunked_token_divergence` projects student
  and teacher hidden states through their heads one `[tokens, 32768]` vocabulary tile at a time (TRL's kernel).
- naive: student logits `[N, V]`, teacher conditional and unconditional logits `[N, V]` each (no grad),
  `guidance.guided_log_probs`, `divergence.token_divergence`, backward. Written the plain way, except that the
  teacher's branch logits are freed once the guided log-probabilities exist.

Inputs: student hidden `[N, H]` and student head weight `[V, H]` (both requires_grad, as in full finetuning), teacher
conditional/unconditional hidden `[N, H]` and a separate teacher head `[V, H]`; float32; V = 151936 and H = 896 (Qwen2
0.5B sizes). The loss is the mean per-token divergence.

Every (variant, divergence) runs in a fresh subprocess. After the inputs are allocated the worker records its resident
set (VmRSS) and resets the kernel's high-water mark (`/proc/self/clear_refs`), runs forward + backward, and reports
`VmHWM - baseline`: the extra peak memory of the loss, including the `[V, H]` float32 gradient of the student head
(~0.54 GB at these sizes) that both variants must produce. The parent also records each child's whole-life peak
(`ru_maxrss` from `os.wait4`). The two variants' losses, per-token divergences and hidden-state gradients are compared.

Run:  python benchmarks/distill_memory.py [--tokens 2048 ...] [--kinds reverse_kl forward_kl jsd]
Writes benchmarks/results/distill_memory.json and distill_memory.md.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"
VARIANTS = ("chunked", "naive")
GIB = 1024**3


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the resident-set high-water mark (VmHWM) to the current RSS
        return True
    except OSError:
        return False


def make_inputs(tokens: int, hidden: int, vocab: int, seed: int):
    import torch

    generator = torch.Generator().manual_seed(seed)
    # Logits of a realistic spread (std ~ 1.5) and a teacher close to the student, as at the start of training.
    head = torch.randn(vocab, hidden, generator=generator) * (1.5 / hidden**0.5)
    teacher_head = head.clone()
    conditional = torch.randn(tokens, hidden, generator=generator)
    unconditional = conditional + 0.3 * torch.randn(tokens, hidden, generator=generator)
    student_hidden = conditional + 0.3 * torch.randn(tokens, hidden, generator=generator)
    return {
        "student_hidden": student_hidden.requires_grad_(True),
        "student_head": head.requires_grad_(True),
        "conditional": conditional,
        "unconditional": unconditional,
        "teacher_head": teacher_head,
    }


def chunked_loss(inputs, kind: str, guidance_scale: float):
    from trl_diversity.trainer.divergence import chunked_token_divergence
    from trl_diversity.trainer.guidance import guide

    guided = guide(inputs["conditional"], inputs["unconditional"], guidance_scale)
    per_token = chunked_token_divergence(
        inputs["student_hidden"], inputs["student_head"], guided, inputs["teacher_head"], kind=kind
    )
    return per_token


def _naive_teacher_log_probs(inputs, guidance_scale: float):
    import torch

    from trl_diversity.trainer.guidance import guided_log_probs

    with torch.no_grad():
        cond_logits = inputs["conditional"] @ inputs["teacher_head"].T
        uncond_logits = inputs["unconditional"] @ inputs["teacher_head"].T
        return guided_log_probs(cond_logits, uncond_logits, guidance_scale)  # branch logits freed on return


def naive_loss(inputs, kind: str, guidance_scale: float):
    from trl_diversity.trainer.divergence import token_divergence

    student_logits = inputs["student_hidden"] @ inputs["student_head"].T
    teacher_log_probs = _naive_teacher_log_probs(inputs, guidance_scale)
    return token_divergence(student_logits, teacher_log_probs, kind=kind)


def worker(args) -> None:
    import torch

    # Imported before the baseline is taken: importing trl alone adds ~0.3 GiB of resident memory.
    import trl_diversity.trainer.divergence  # noqa: F401
    import trl_diversity.trainer.guidance  # noqa: F401

    inputs = make_inputs(args.tokens[0], args.hidden, args.vocab, args.seed)
    loss_fn = chunked_loss if args.variant == "chunked" else naive_loss
    gc.collect()
    baseline_kib = _status_kib("VmRSS")
    reset = _reset_peak()
    start = time.perf_counter()
    per_token = loss_fn(inputs, args.kind, args.guidance_scale)
    loss = per_token.mean()
    forward_s = time.perf_counter() - start
    loss.backward()
    total_s = time.perf_counter() - start
    peak_kib = _status_kib("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    grad_hidden = inputs["student_hidden"].grad
    grad_head = inputs["student_head"].grad
    torch.save(
        {"per_token": per_token.detach(), "grad_hidden": grad_hidden, "grad_head_rows": grad_head[:4096].clone()},
        args.save,
    )
    print(
        json.dumps(
            {
                "loss": loss.item(),
                "forward_s": forward_s,
                "forward_backward_s": total_s,
                "baseline_rss_gib": baseline_kib / 1024**2,
                "peak_rss_gib": peak_kib / 1024**2,
                "peak_extra_gib": (peak_kib - baseline_kib) / 1024**2,
                "peak_reset": reset,
                "grad_head_norm": grad_head.norm().item(),
                "threads": torch.get_num_threads(),
            }
        )
    )


def run_worker(variant: str, kind: str, tokens: int, args, save: str) -> dict:
    """Run one variant in a fresh interpreter; reaped with `os.wait4` to read that child's own peak RSS."""
    command = [
        sys.executable,
        os.path.abspath(__file__),
        "--worker",
        variant,
        "--kind",
        kind,
        "--tokens",
        str(tokens),
        "--hidden",
        str(args.hidden),
        "--vocab",
        str(args.vocab),
        "--guidance-scale",
        str(args.guidance_scale),
        "--seed",
        str(args.seed),
        "--save",
        save,
    ]
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        child = subprocess.Popen(command, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if child.returncode != 0:
        raise RuntimeError(f"{variant}/{kind} failed (exit {child.returncode}):\n{stderr[-3000:]}")
    record = json.loads(stdout.strip().splitlines()[-1])
    record["process_wall_s"] = wall
    record["child_lifetime_peak_rss_gib"] = usage.ru_maxrss / 1024**2  # KiB on Linux
    return record


def compare(saved: dict[str, str]) -> dict:
    import torch

    chunked = torch.load(saved["chunked"])
    naive = torch.load(saved["naive"])

    def max_rel(a, b):
        return ((a - b).abs().max() / b.abs().max().clamp(min=1e-30)).item()

    return {
        "per_token_max_abs_diff": (chunked["per_token"] - naive["per_token"]).abs().max().item(),
        "grad_hidden_max_rel_diff": max_rel(chunked["grad_hidden"], naive["grad_hidden"]),
        "grad_head_rows_max_rel_diff": max_rel(chunked["grad_head_rows"], naive["grad_head_rows"]),
    }


def markdown(result: dict) -> str:
    config = result["config"]
    lines = [
        "# Distillation loss: chunked kernel vs. full logits",
        "",
        f"Machine: {result['machine']}. N tokens, H = {config['hidden']}, V = {config['vocab']}, float32, guidance "
        f"scale {config['guidance_scale']}; forward + backward of the mean per-token divergence. One `[N, V]` float32 "
        f"tensor is N x {config['vocab'] * 4 / 1024**2:.2f} MiB ({2048 * config['vocab'] * 4 / GIB:.2f} GiB at "
        f"N = 2048); the student head's gradient `[V, H]` is {config['vocab'] * config['hidden'] * 4 / GIB:.2f} GiB "
        "(in both variants).",
        "",
        "| divergence | N | variant | extra peak RSS (GiB) | child peak RSS (GiB) | forward (s) "
        "| forward + backward (s) | loss |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for case in result["cases"]:
        for variant in VARIANTS:
            r = case[variant]
            lines.append(
                f"| {case['kind']} | {case['tokens']} | {variant} | {r['peak_extra_gib']:.2f} | {r['child_lifetime_peak_rss_gib']:.2f} | "
                f"{r['forward_s']:.1f} | {r['forward_backward_s']:.1f} | {r['loss']:.6f} |"
            )
    lines += [
        "",
        "| divergence | N | memory naive / chunked | time naive / chunked | abs. loss diff | max abs per-token diff "
        "| max rel. grad diff (hidden / head rows) |",
        "|---|---|---|---|---|---|---|",
    ]
    for entry in result["cases"]:
        lines.append(
            f"| {entry['kind']} | {entry['tokens']} | {entry['memory_ratio_naive_over_chunked']:.1f}x | "
            f"{entry['time_ratio_naive_over_chunked']:.2f}x | {entry['loss_abs_diff']:.2e} | "
            f"{entry['per_token_max_abs_diff']:.2e} | {entry['grad_hidden_max_rel_diff']:.1e} / "
            f"{entry['grad_head_rows_max_rel_diff']:.1e} |"
        )
    lines += [
        "",
        "Extra peak RSS: the worker's resident-set high-water mark (reset after the inputs are allocated) minus its "
        "resident set at that moment. Child peak RSS: the subprocess's whole-life peak (`ru_maxrss`), torch and "
        "the inputs (~1.1 GiB for the two heads) included.",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--tokens",
        type=int,
        nargs="+",
        default=[2048],
        help="N: completion tokens (8 sequences x 256 = 2048); several values run each",
    )
    parser.add_argument("--hidden", type=int, default=896)
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--kinds", nargs="+", default=["reverse_kl", "forward_kl", "jsd"])
    parser.add_argument("--guidance-scale", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "distill_memory.json")
    # Internal: run one variant in this process.
    parser.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--kind", help=argparse.SUPPRESS)
    parser.add_argument("--save", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        args.variant = args.worker
        worker(args)
        return 0

    import torch

    started = time.perf_counter()
    result = {
        "benchmark": "distill_memory",
        "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads",
        "config": {
            "hidden": args.hidden,
            "vocab": args.vocab,
            "guidance_scale": args.guidance_scale,
            "seed": args.seed,
            "dtype": "float32",
        },
        "cases": [],
    }
    with tempfile.TemporaryDirectory() as scratch:
        for tokens in args.tokens:
            for kind in args.kinds:
                case, saved = {"kind": kind, "tokens": tokens}, {}
                for variant in VARIANTS:
                    saved[variant] = os.path.join(scratch, f"{kind}-{tokens}-{variant}.pt")
                    case[variant] = r = run_worker(variant, kind, tokens, args, saved[variant])
                    print(
                        f"{kind:10s} N={tokens} {variant:7s}: extra peak {r['peak_extra_gib']:.2f} GiB "
                        f"(child peak {r['child_lifetime_peak_rss_gib']:.2f} GiB), forward {r['forward_s']:.1f} s, "
                        f"forward+backward {r['forward_backward_s']:.1f} s, loss {r['loss']:.6f}",
                        flush=True,
                    )
                case.update(compare(saved))
                case["loss_abs_diff"] = abs(case["chunked"]["loss"] - case["naive"]["loss"])
                case["memory_ratio_naive_over_chunked"] = (
                    case["naive"]["peak_extra_gib"] / case["chunked"]["peak_extra_gib"]
                )
                case["time_ratio_naive_over_chunked"] = (
                    case["naive"]["forward_backward_s"] / case["chunked"]["forward_backward_s"]
                )
                print(
                    f"{kind:10s} N={tokens} |loss diff| {case['loss_abs_diff']:.2e}, max per-token diff "
                    f"{case['per_token_max_abs_diff']:.2e}, grad rel diff {case['grad_hidden_max_rel_diff']:.1e}",
                    flush=True,
                )
                result["cases"].append(case)
    result["total_wall_s"] = time.perf_counter() - started

    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(result)
    args.output.with_suffix(".md").write_text(table)
    print()
    print(table)
    print(f"wrote {args.output} and {args.output.with_suffix('.md')} ({result['total_wall_s']:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
