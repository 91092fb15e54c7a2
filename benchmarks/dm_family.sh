#!/usr/bin/env bash
# The DM-family table: random real, DM and Decomposed-DM variants on one dataset, each distilled set
# trained under the DSA hard-label protocol (and, with -t TEACHER, under the FKD soft-label protocol),
# for each seed; finished stages are skipped on re-run, so a killed table resumes.
#
# Usage: benchmarks/dm_family.sh -r DATA_ROOT/cifar10 [-d cifar10] [-o OUT] [-c IPC] [-s "0 1 2"]
#          [-i ITERATIONS] [-b BATCH_REAL] [-e DSA_EPOCHS] [-t TEACHER_DIR -z FKD_EPOCHS] [-x EXPERTS_DIR]
#          [-m "random-real dm ddm ddm-style ddm-icd ddm-mm-pre dance random-real-f2"] [-R | -F] [-D cpu|cuda]
#   -R   recover only (synthesise the sets, train nothing)
#   -F   soft labels only: with -t, skip the DSA hard-label training (its table was run before)
#   -D   device of every stage (default cpu)
# Variants: dm = --method dm; ddm = --method ddm (defaults: style both, post-norm, ICD 10);
#   ddm-style = ddm without ICD; ddm-icd = ddm without style; ddm-mm-pre = moments matching alone on
#   pre-norm maps with --mm-weight 0.01; dance = --method dance --experts EXPERTS_DIR (multi-formation
#   factor 2); random-real-f2 = random real at DANCE's pixel budget (4 real images in the tiles of each
#   stored image: DANCE's iteration 0). Factor-2 sets train with --factor 2 under the DSA protocol and
#   are decoded (python -m wmdd.tools.decode_images) for the FKD protocol.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$REPO/.venv/bin/python}"
DATA=""; DATASET=cifar10; OUT="$REPO/.cache/dm-family"; IPC=10; SEEDS="0 1 2"; ITERS=60; BREAL=32
EPOCHS=100; TEACHER=""; FKD_EPOCHS=200; RECOVER_ONLY=0; FKD_ONLY=0; EXPERTS=""; DEVICE=cpu
VARIANTS="random-real dm ddm ddm-style ddm-icd ddm-mm-pre"
while getopts ":r:d:o:c:s:i:b:e:t:z:m:x:D:RF" opt; do
  case "$opt" in
    r) DATA="$OPTARG" ;; d) DATASET="$OPTARG" ;; o) OUT="$OPTARG" ;; c) IPC="$OPTARG" ;; s) SEEDS="$OPTARG" ;;
    i) ITERS="$OPTARG" ;; b) BREAL="$OPTARG" ;; e) EPOCHS="$OPTARG" ;; t) TEACHER="$OPTARG" ;;
    z) FKD_EPOCHS="$OPTARG" ;; m) VARIANTS="$OPTARG" ;; x) EXPERTS="$OPTARG" ;; D) DEVICE="$OPTARG" ;; R) RECOVER_ONLY=1 ;; F) FKD_ONLY=1 ;;
    *) sed -n '2,17p' "$0" >&2; exit 2 ;;
  esac
done
[[ -d "$DATA/train" ]] || { sed -n '2,17p' "$0" >&2; exit 2; }
[[ "$FKD_ONLY" == 0 || -n "$TEACHER" ]] || { echo "-F (soft labels only) needs -t TEACHER_DIR" >&2; exit 2; }
cd "$REPO"
for seed in $SEEDS; do
  for variant in $VARIANTS; do
    factor=1
    case "$variant" in
      random-real) flags=(--method random-real) ;;
      random-real-f2) flags=(--method random-real --factor 2); factor=2 ;;
      dance) [[ -n "$EXPERTS" ]] || { echo "variant dance needs -x EXPERTS_DIR (python -m wmdd.pretrain --experts N)" >&2; exit 2; }
             flags=(--method dance --experts "$EXPERTS"); factor=2 ;;
      dm) flags=(--method dm) ;;
      ddm) flags=(--method ddm) ;;
      ddm-style) flags=(--method ddm --icd-weight 0) ;;
      ddm-icd) flags=(--method ddm --style none) ;;
      ddm-mm-pre) flags=(--method ddm --style mm --style-features pre-norm --mm-weight 0.01 --icd-weight 0) ;;
      *) echo "unknown variant $variant" >&2; exit 2 ;;
    esac
    [[ "$variant" != random-real* ]] && flags+=(--iterations "$ITERS" --batch-real "$BREAL")
    exp="$OUT/$variant-ipc$IPC-s$seed"
    echo "=== $variant IPC $IPC seed $seed"
    "$PYTHON" -m wmdd.recover --dataset "$DATASET" --data-path "$DATA" --output-dir "$exp/recover" --ipc "$IPC" \
      --seed "$seed" --device "$DEVICE" --log-every 50 "${flags[@]}"
    [[ "$RECOVER_ONLY" == 1 ]] && continue
    [[ "$FKD_ONLY" == 0 ]] && "$PYTHON" -m wmdd.train --protocol dsa --images "$exp/recover/images" --dataset "$DATASET" --data-path "$DATA" \
      --output-dir "$exp/train-dsa" --epochs "$EPOCHS" --seed "$seed" --device "$DEVICE" --val-every "$EPOCHS" \
      --factor "$factor"
    if [[ -n "$TEACHER" ]]; then
      images="$exp/recover/images"
      if [[ "$factor" != 1 ]]; then
        "$PYTHON" -m wmdd.tools.decode_images --images "$images" --output-dir "$exp/decoded"
        images="$exp/decoded/images"
      fi
      "$PYTHON" -m wmdd.relabel --teacher "$TEACHER" --images "$images" --output-dir "$exp/relabel" \
        --epochs "$FKD_EPOCHS" --batch-size 100 --seed "$seed" --device "$DEVICE" --config "wmdd/configs/$DATASET.yaml"
      "$PYTHON" -m wmdd.train --images "$images" --soft-labels "$exp/relabel" --teacher "$TEACHER" \
        --data-path "$DATA" --model convnet --output-dir "$exp/train-fkd" --epochs "$FKD_EPOCHS" --batch-size 100 \
        --seed "$seed" --device "$DEVICE" --config "wmdd/configs/$DATASET.yaml" --val-every 50
    fi
  done
done
"$PYTHON" -m wmdd.tools.fair_scores "$OUT"
if [[ " $VARIANTS " == *" random-real-f2 "* ]]; then
  echo "paired with random real at the multi-formation pixel budget (random-real-f2):"
  "$PYTHON" -m wmdd.tools.fair_scores "$OUT" --baseline random-real-f2
fi
