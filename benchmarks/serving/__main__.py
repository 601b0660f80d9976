"""`python -m benchmarks.serving`: the parts named by `--part`, or one measurement (`--worker`, in its own process)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from . import __doc__ as USAGE
from .dial import dial, worker_dial_lora, worker_dial_merged, worker_dial_transformers
from .dial_report import dial_report
from .engines import worker_one_process, worker_transformers, worker_vllm
from .throughput import quality, reconcile, served_finetunes, settle
from .throughput_report import reconciliation_report, settled_report


def worker(key: str, output: str) -> None:
    from trl_diversity.atomic import write_text_atomic

    spec = json.loads(key)
    run = {
        "transformers": worker_transformers,
        "vllm": worker_vllm,
        "one_process": worker_one_process,
        "dial_lora": worker_dial_lora,
        "dial_merged": worker_dial_merged,
        "dial_transformers": worker_dial_transformers,
    }[spec["engine"]]
    result = run(spec)
    write_text_atomic(output, json.dumps(result, default=str))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=USAGE.split("\n\n")[0])
    parser.add_argument("--part", choices=["all", "reconcile", "settled", "dial", "report"], default="all")
    parser.add_argument("--worker", nargs=2, metavar=("SPEC", "OUTPUT"), help=argparse.SUPPRESS)
    parser.add_argument("--redo", nargs="*", default=[], help="measure again the cached specs containing these")
    parser.add_argument("--wait_for", nargs="*", default=["experiments.teacher_front"])
    parser.add_argument("--timeout", type=int, default=900, help="seconds one measurement may take")
    parser.add_argument(
        "--dial_bf16",
        action="store_true",
        help="--part dial: also compare LoRA and merged greedy tokens in bf16 (two more engine starts, slow on a CPU "
        "without native bf16)",
    )
    parser.add_argument(
        "--finetunes",
        nargs=2,
        metavar=("QUALITY", "DIVERSITY"),
        default=None,
        help="--part dial: the dial's ends, two LoRA adapters of the default model (w = 0 and w = 1; e.g. "
        "experiments.reproduce's quality and diversity models under outputs/); default: two random adapters",
    )
    args = parser.parse_args(argv)
    for folder in args.finetunes or []:
        if not (Path(folder) / "adapter_config.json").is_file():
            parser.error(f"--finetunes: {folder} is not a LoRA adapter folder (no adapter_config.json)")
    if args.worker:
        worker(*args.worker)
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    dial_result = None
    if args.part in ("all", "dial", "report"):
        dial_result = dial(args)
        served = served_finetunes(dial_result)  # before the report drops the samples from the result
        dial_report(dial_result)
    else:
        served = {}
    if args.part in ("all", "reconcile", "settled", "report"):
        settled = settle(args)
        settled_report(settled, quality(settled["quality_runs"], served))
        if args.part != "settled":
            reconciliation_report(reconcile(args), settled)


if __name__ == "__main__":
    sys.exit(main())
