#!/usr/bin/env bash
# GPU smoke run and timings, in one call (benchmarks/RESULTS.md, "GPU timings"):
#   1. run.sh end to end on CUDA at the paper's Imagenette resolution (224 px, ResNet-18
#      teacher and student): pretrain, WMDD recover, decode, relabel, train, at smoke budgets;
#   2. recover iteration against a bare forward + backward (benchmarks.recover_overhead) with
#      that teacher, float32 and bf16 autocast + channels_last;
#   3. DANCE experts: pretrain --experts 5, one epoch of 1,000 CIFAR-10 train images per class each;
#   4. DM / DDM iterations against a bare embedding pass, and DANCE against DM
#      (benchmarks.dm_overhead) at the papers' batch_real.
# The sizes above are the defaults (ITERS, EPOCHS, BENCH_ITERS). Each step has its own time limit and log; a failed step is reported and the next one runs.
#
#   benchmarks/gpu_timings.sh DATA_ROOT OUT_DIR
#
# DATA_ROOT holds cifar10/ (train, test) and imagenette/ (train, val) ImageFolder trees.
set -uo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
cd "$REPO"
if [[ $# -ne 2 ]]; then echo "usage: $0 DATA_ROOT OUT_DIR" >&2; exit 2; fi
DATA="$(cd "$1" && pwd)"
OUT="$(mkdir -p "$2" && cd "$2" && pwd)"
PYTHON="${PYTHON:-python3}"
DEVICE="${DEVICE:-cuda}"         # a dry run of the script itself: DEVICE=cpu ITERS=2 EPOCHS=1 BENCH_ITERS=1
ITERS="${ITERS:-100}"            # recover iterations of the smoke run
EPOCHS="${EPOCHS:-20}"           # relabel and train epochs of the smoke run
BENCH_ITERS="${BENCH_ITERS:-20}" # iterations per timed round
export PYTHON PYTHONUNBUFFERED=1
RUNS="$OUT/runs"
failed=()

step() {  # step NAME SECONDS COMMAND...: run with a limit, log to OUT/NAME.log, time it
  local name=$1 limit=$2; shift 2
  local start=$SECONDS
  echo "== $name: $*"
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "== $name: exit $rc after $((SECONDS - start)) s"
  if [[ $rc -ne 0 ]]; then failed+=("$name"); tail -n 15 "$OUT/$name.log"; fi
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PYTHON" -c 'import torch, torchvision, ot; print("torch", torch.__version__, "torchvision",
torchvision.__version__, "POT", ot.__version__, "cuda", torch.cuda.is_available())'

step smoke 300 ./run.sh -d imagenette -r "$DATA" --out "$RUNS" -x gpu-smoke -c 10 -p --teacher-epochs 3 \
  -i "$ITERS" -z "$EPOCHS" --device "$DEVICE" --pretrain-args "--workers 8" --relabel-args "--workers 8" --train-args "--workers 8"
TEACHER="$RUNS/teachers/imagenette_resnet18/t0"
step recover_fp32 120 "$PYTHON" -m benchmarks.recover_overhead --teacher "$TEACHER" --device "$DEVICE" \
  --iterations "$BENCH_ITERS" --rounds 3
step recover_amp 120 "$PYTHON" -m benchmarks.recover_overhead --teacher "$TEACHER" --device "$DEVICE" \
  --iterations "$BENCH_ITERS" --rounds 3 --amp --channels-last
step experts 180 "$PYTHON" -m wmdd.pretrain --experts 5 --dataset cifar10 --data-path "$DATA/cifar10" --epochs 1 \
  --lr-scheduler none --train-per-class 1000 --workers 8 --device "$DEVICE" --output-dir "$RUNS/experts"
step dm_ddm 120 "$PYTHON" -m benchmarks.dm_overhead --methods dm ddm --batch-real 256 --iterations "$BENCH_ITERS" --rounds 3 \
  --data-path "$DATA/cifar10" --device "$DEVICE"
step dm_dance 120 "$PYTHON" -m benchmarks.dm_overhead --methods dm dance --experts "$RUNS/experts" \
  --batch-real 128 --iterations "$BENCH_ITERS" --rounds 3 --data-path "$DATA/cifar10" --device "$DEVICE"

echo "== results"
cat "$RUNS/results.csv" 2>/dev/null
grep -h "seconds_per_expert" "$RUNS/experts/manifest.json" 2>/dev/null
for f in recover_fp32 recover_amp dm_ddm dm_dance; do echo "-- $f"; tail -n 8 "$OUT/$f.log"; done
if [[ ${#failed[@]} -gt 0 ]]; then echo "failed steps: ${failed[*]}"; exit 1; fi
