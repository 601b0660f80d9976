#!/usr/bin/env bash
# The runs of issue #23, in order, each resumable (reproduce.py caches every finetune and point): rerun this script
# after an interruption and it computes only what is missing. One heavy job at a time on 2 cores.
#   nohup bash benchmarks/win_runs.sh > logs/win_runs.log 2>&1 &
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
run() { echo "=== $(date -u +%H:%M:%S) reproduce.py --budget full $*"; .venv/bin/python benchmarks/reproduce.py --budget full "$@"; }
# 1. TRL's own entropy bonus in place of the diversity reward: a front of its own (with beta = 0). The first run
#    also evaluates the extended CFG (gamma 4, 5) and temperature (T 0.4, 0.3) dials on the base.
run --entropy_coef 0.03 --endpoints_only
# 2. The beta = 0 quality model again (its checkpoint is not committed): the distilled model that
#    benchmarks/vllm_serving.py serves, and one end of every LERP dial.
echo "=== $(date -u +%H:%M:%S) the beta = 0 quality model"
.venv/bin/python benchmarks/reproduce.py --budget full --train_quality_only
run --entropy_coef 0.1 --endpoints_only
# 3. The divergence lever at the full budget (lever_search ranked jsd and forward_kl above reverse KL at 24 steps).
run --distill_divergence forward_kl --endpoints_only
run --distill_divergence jsd --endpoints_only
run --entropy_coef 0.01 --endpoints_only
echo "=== $(date -u +%H:%M:%S) all done"
