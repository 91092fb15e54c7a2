#!/usr/bin/env bash
# The prepared GPU check (benchmarks/RESULTS.md, "GPU check"), one call of at most 8 minutes on one
# H100 with the CIFAR-10 archive carried:
#   1. operators per recover iteration at 10 and 100 classes (benchmarks.op_counts; the CPU proxy);
#   2. DM and DDM iterations against a bare embedding pass, DANCE against DM (benchmarks.dm_overhead,
#      the papers' batch_real; DANCE with 2 experts of 1 epoch, trained here);
#   3. a WMDD recover iteration against a bare forward + backward, ResNet-18 at SIZE px, float32
#      (benchmarks.recover_overhead);
#   4. teacher pretraining (SIZE px, the split held on the device) and the student (32 px, IPC 50) against
#      bare loops on synthetic device tensors, bf16 autocast + channels_last (benchmarks.pretrain_throughput /
#      train_throughput);
#   5. DM on CIFAR-10 IPC 10 at the paper's budget (ITERATIONS = 20,000 iterations, batch_real 256, the
#      DSA protocol for EPOCHS = 1,000 epochs, seed 0) beside random real under the same protocol
#      (benchmarks/dm_family.sh); the paper reports 48.9 % and 26.0 %.
# Each step has its own time limit and log, cut to what is left of DEADLINE (480 s, the 8 minutes
# of one call), so the summary line is always printed; a failed step is reported and the next one runs.
#
#   benchmarks/gpu_check.sh CIFAR10_ARCHIVE OUT_DIR
#
# Dry run on a CPU (the test suite runs it on the committed CIFAR-10 subset):
#   DEVICE=cpu ITERATIONS=2 EPOCHS=1 BENCH_ITERS=1 ROUNDS=1 BENCH_IPC=2 BATCH_REAL=4 SIZE=32 \
#     PRETRAIN_PER_CLASS=8 STUDENT_IPC=4 OP_METHODS= TIME_SCALE=20 WORKERS=0 PIPELINE=device \
#     benchmarks/gpu_check.sh ARCHIVE OUT_DIR
set -uo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
cd "$REPO"
if [[ $# -ne 2 || ! -f "$1" ]]; then echo "usage: $0 CIFAR10_ARCHIVE OUT_DIR (the archive must exist)" >&2; exit 2; fi
ARCHIVE="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
OUT="$(mkdir -p "$2" && cd "$2" && pwd)"
PYTHON="${PYTHON:-python3}"
DEVICE="${DEVICE:-cuda}"
ITERATIONS="${ITERATIONS:-20000}"  # DM's iterations in step 5
EPOCHS="${EPOCHS:-1000}"           # DSA-protocol epochs in step 5
BENCH_ITERS="${BENCH_ITERS:-20}"   # iterations per timed round in steps 2-4
ROUNDS="${ROUNDS:-3}"              # timed rounds in steps 2-4
BENCH_IPC="${BENCH_IPC:-10}"       # IPC of the timed iterations in steps 2-3
BATCH_REAL="${BATCH_REAL:-256}"    # DM's real images per class and iteration (DANCE: half)
SIZE="${SIZE:-224}"                # image side of steps 3-4
PRETRAIN_PER_CLASS="${PRETRAIN_PER_CLASS:-500}"  # real images per class in a pretrain round (step 4)
STUDENT_IPC="${STUDENT_IPC:-50}"   # the student's set in step 4: a real subset of IPC images per class
OP_METHODS="${OP_METHODS-wmdd dm ddm dance}"  # methods of step 1 (empty: skip it; the suite counts them itself)
TIME_SCALE="${TIME_SCALE:-1}"      # multiplies every time limit (the dry run on a busy CPU)
DEADLINE="${DEADLINE:-480}"        # seconds for the whole script (8 min): a step gets at most what is left of it
WORKERS="${WORKERS:-8}"            # DataLoader workers of steps 2 and 4
PIPELINE="${PIPELINE:-auto}"       # pretrain's --input-pipeline in step 4 (auto: the device split on CUDA)
export PYTHONUNBUFFERED=1
DATA="$OUT/cifar10"
failed=()

step() {  # step NAME SECONDS COMMAND...: run with a limit (cut to what is left of DEADLINE), log to OUT/NAME.log
  local name=$1 limit=$((($2) * TIME_SCALE)) left=$((DEADLINE * TIME_SCALE - SECONDS)); shift 2
  local start=$SECONDS
  if (( left <= 0 )); then echo "== $name: skipped, no time left"; failed+=("$name"); return; fi
  if (( limit > left )); then limit=$left; fi
  echo "== $name: $*"
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "== $name: exit $rc after $((SECONDS - start)) s"
  if [[ $rc -ne 0 ]]; then failed+=("$name"); fi
  tail -n 8 "$OUT/$name.log"
}

if [[ "$DEVICE" == cuda ]]; then nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; fi
"$PYTHON" -c 'import torch, torchvision; print("torch", torch.__version__, "torchvision", torchvision.__version__,
"cuda", torch.cuda.is_available())'
step extract 60 "$PYTHON" -m wmdd prepare extract "$ARCHIVE" "$DATA"
step subset 30 "$PYTHON" -m wmdd prepare extract "$ARCHIVE" "$OUT/cifar10-ipc$STUDENT_IPC" \
  --train-per-class "$STUDENT_IPC" --val-per-class 10
if [[ -n "$OP_METHODS" ]]; then step op_counts 60 "$PYTHON" -m benchmarks.op_counts --methods $OP_METHODS; fi
step experts 60 "$PYTHON" -m wmdd pretrain --experts 2 --dataset cifar10 --data-path "$DATA" --epochs 1 \
  --lr-scheduler none --workers "$WORKERS" --device "$DEVICE" --output-dir "$OUT/experts"
step dm_ddm 45 "$PYTHON" -m benchmarks.dm_overhead --methods dm ddm --ipc "$BENCH_IPC" --batch-real "$BATCH_REAL" \
  --iterations "$BENCH_ITERS" --rounds "$ROUNDS" --data-path "$DATA" --device "$DEVICE"
step dm_dance 45 "$PYTHON" -m benchmarks.dm_overhead --methods dm dance --experts "$OUT/experts" --ipc "$BENCH_IPC" \
  --batch-real "$((BATCH_REAL / 2))" --iterations "$BENCH_ITERS" --rounds "$ROUNDS" --data-path "$DATA" --device "$DEVICE"
step recover 45 "$PYTHON" -m benchmarks.recover_overhead --model resnet18 --input-size "$SIZE" --data-path "$DATA" \
  --ipc "$BENCH_IPC" --batch-size "$((BENCH_IPC * 10))" \
  --iterations "$BENCH_ITERS" --rounds "$ROUNDS" --device "$DEVICE"
step pretrain 45 "$PYTHON" -m benchmarks.pretrain_throughput --model resnet18 --input-size "$SIZE" --data-path "$DATA" \
  --images-per-class "$PRETRAIN_PER_CLASS" --batch-size 128 --rounds "$ROUNDS" --device "$DEVICE" --amp --channels-last \
  --input-pipeline "$PIPELINE" --workers "$WORKERS"
step student 45 "$PYTHON" -m benchmarks.train_throughput --model resnet18 --ipc "$STUDENT_IPC" --batch-size 100 \
  --rounds "$ROUNDS" --device "$DEVICE" --amp --channels-last --workers "$WORKERS" --data-path "$OUT/cifar10-ipc$STUDENT_IPC" \
  --work-dir "$OUT/student"
step dm_paper 330 env PYTHON="$PYTHON" benchmarks/dm_family.sh -r "$DATA" -o "$OUT/dm-paper" -c 10 -s 0 \
  -i "$ITERATIONS" -b "$BATCH_REAL" -e "$EPOCHS" -m "random-real dm" -D "$DEVICE"

echo "== failed steps: ${failed[*]:-none}"
[[ ${#failed[@]} -eq 0 ]]
