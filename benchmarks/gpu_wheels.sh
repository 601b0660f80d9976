#!/usr/bin/env bash
# Prepare, where PyPI is reachable, what the GPU machine (no package index) needs for benchmarks/gpu_check.py:
#   .whl/*.whl          the Python packages it lacks, pinned to this project's environment, for CPython 3.12 on
#                       manylinux x86_64 (installed there with --no-index --no-deps)
#   .whl/src/           DeepSpeed's source archive, which gpu_check.py builds there (its ops compile on use)
#   .whl/fallback/      the pure-Python wheel built here from that archive, used only if the build there fails
#   .whl/tokenizers/    the tokenizer files of SmolLM2 and MiniLM (no weights: the models are built there at random)
# and checks that the whole folder stays within what one call may carry (~50 MiB, the repository included).
#
#   bash benchmarks/gpu_wheels.sh [OUTPUT_DIR]      (from anywhere; default: .whl in the repository root)
#
# What the GPU machine already has (torch 2.11, triton, transformers 5.17, accelerate, peft, sentence-transformers,
# pandas, pyarrow, xxhash, einops, msgpack, ninja, py-cpuinfo, setuptools, wheel, ...) is listed in the device notes
# (KINDS.md); the packages below are what trl, datasets and DeepSpeed need beyond that.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
out=${1:-.whl}
limit_mib=${LIMIT_MIB:-50}

# trl and datasets, and their dependencies missing there; pydantic and hjson for DeepSpeed.
from_venv=(trl datasets dill multiprocess pydantic pydantic-core annotated-types typing-inspection)
# Not in this project's environment (DeepSpeed is a dev extra); pinned here.
pinned=(hjson==3.1.0)
deepspeed_version=${DEEPSPEED_VERSION:-0.19.8}

version() { "$py" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1"; }
download() {
  "$py" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$out" "$1"
}

rm -rf "$out"
mkdir -p "$out/src" "$out/fallback"
for name in "${from_venv[@]}"; do
  spec="$name==$(version "$name")"
  echo "wheel: $spec"
  download "$spec"
done
for spec in "${pinned[@]}"; do
  echo "wheel: $spec"
  download "$spec"
done

# DeepSpeed ships only as a source archive; it builds without torch (its ops are compiled when first used).
echo "source: deepspeed==$deepspeed_version"
"$py" -m pip download -q --disable-pip-version-check --no-deps --no-binary=:all: -d "$out/src" \
  "deepspeed==$deepspeed_version"
"$py" -m pip wheel -q --disable-pip-version-check --no-deps -w "$out/fallback" "$out/src/deepspeed-$deepspeed_version.tar.gz"

echo "tokenizers:"
HF_HUB_OFFLINE=1 "$py" benchmarks/gpu_check.py --export-tokenizers "$out/tokenizers"

# The folder is git-ignored (.gitignore: /.whl/): it travels as a carried path, beside the repository's files.
echo
ls -la "$out" "$out/src" "$out/fallback"
git ls-files -z | "$py" -c '
import os, pathlib, sys
out, limit = pathlib.Path(sys.argv[1]), float(sys.argv[2])
tree = sum(os.path.getsize(p) for p in sys.stdin.read().split("\0") if p and os.path.isfile(p))
carried = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
mib = 1024**2
print(f"carried folder: {carried / mib:.1f} MiB; repository files: {tree / mib:.1f} MiB; limit: {limit:.0f} MiB")
sys.exit(0 if carried + tree <= limit * mib else "too large to carry in one call")
' "$out" "$limit_mib"
echo "On the GPU machine (carry $out):"
echo "  python3 benchmarks/gpu_check.py --wheels $out --output \$OUT/gpu_check.json"
