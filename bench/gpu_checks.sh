#!/usr/bin/env bash
# Every check this project runs on a GPU, in one go, for a machine lent for a few minutes:
#   bash bench/gpu_checks.sh OUT_DIR
# 1. the output layer + loss alone (bench_trainer_gpu.py --loss-layer): fused chunk sizes,
#    unfused eager and compiled, the matmul floor;
# 2. the OLMo2-1B step, bf16 + torch.compile + fused AdamW, dolmino / transformers / OLMo-core
#    (bench_trainer_gpu.py), dolmino with the fused loop and chunk size step 1 found fastest;
# 3. the CUDA tests (pytest -m gpu).
# Each step has its own time limit and writes into OUT_DIR as it goes, so a step that runs
# out of time leaves the others' results. LOSS_LAYER_S=0 skips step 1 (step 2 then runs
# dolmino's defaults); IMPLS picks the step's implementations. PYTHON picks the interpreter
# (default python3); it needs torch with CUDA, transformers, and OLMo-core importable for
# the third peer.
# DRY_RUN=1 runs both benches with --dry-run (CPU, tiny model): the plumbing, no figure.
set -uo pipefail
out=${1:?usage: bench/gpu_checks.sh OUT_DIR}
py=${PYTHON:-python3}
dry=${DRY_RUN:+--dry-run}
cd "$(dirname "$0")/.."
mkdir -p "$out"
export PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  "$py" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
} > "$out/machine.txt" 2>&1

loss_args=""
if [ "${LOSS_LAYER_S:-120}" != 0 ]; then
timeout "${LOSS_LAYER_S:-120}" "$py" bench/bench_trainer_gpu.py --loss-layer $dry > "$out/loss_layer.json" 2> "$out/loss_layer.log"
echo "loss layer rc=$?" >> "$out/machine.txt"
loss_args=$("$py" - "$out/loss_layer.json" <<'PY'
import json, sys
try:
    variants = json.load(open(sys.argv[1]))["variants"]
except (OSError, ValueError, KeyError):
    sys.exit(0)
fused = [v for v in variants.values() if "loss_path" in v and "ms" in v]
if fused:
    best = min(fused, key=lambda v: v["ms"])
    print(f"--loss-path {best['loss_path']} --loss-chunk-size {best['chunk']}")
PY
)
fi
echo "dolmino loss layer for the step: ${loss_args:-default}" >> "$out/machine.txt"

timeout "${STEP_S:-330}" "$py" bench/bench_trainer_gpu.py $dry --impls "${IMPLS:-dolmino,olmo-core,transformers}" --timeout "${WORKER_S:-240}" \
  $loss_args > "$out/trainer_gpu.json" 2> "$out/trainer_gpu.log"
echo "step bench rc=$?" >> "$out/machine.txt"

timeout "${TESTS_S:-110}" "$py" -m pytest -p no:cacheprovider -q -m gpu tests/test_trainer_gpu.py \
  tests/test_trainer_fused_loss.py tests/test_trainer_loss.py tests/test_filter_fineweb_edu.py > "$out/gpu_tests.log" 2>&1
echo "gpu tests rc=$?" >> "$out/machine.txt"
