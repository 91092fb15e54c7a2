#!/usr/bin/env bash
# The converged ConvNet teachers that the results tables of benchmarks/RESULTS.md use, rebuilt by one
# command into .cache/teachers/ (ignored by git): CIFAR-10 on its full train split at 32 px, and
# Imagenette with its 224-px JPEGs random-resized-cropped to 32 px. Each run resumes from last.pt when
# killed and is skipped when it has finished with the same arguments. The real archives are found as
# benchmarks/data.py says ($WMDD_SHARED_DATASETS, else ../shared/datasets).
#
# Usage: benchmarks/teachers.sh [cifar10] [imagenette]     (default: both, one after the other)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$REPO/.venv/bin/python}"
cd "$REPO"
NAMES=("$@")
[[ ${#NAMES[@]} -eq 0 ]] && NAMES=(cifar10 imagenette)

for name in "${NAMES[@]}"; do
  case "$name" in
    cifar10) flags=(--epochs 30 --output-dir .cache/teachers/cifar10_convnet_e30) ;;
    imagenette) flags=(--input-size 32 --epochs 60 --output-dir .cache/teachers/imagenette_convnet32_e60) ;;
    *) echo "error: unknown teacher $name: expected cifar10 or imagenette" >&2; exit 2 ;;
  esac
  "$PYTHON" -c "from benchmarks.data import cached_dataset; cached_dataset('$name')"
  # SGD momentum 0.9, cosine schedule, padded random crop + flip (CIFAR-10) or random-resized crop + flip
  # (Imagenette), the split held in memory and augmented in the training process (no decoding workers)
  "$PYTHON" -m wmdd.pretrain --dataset "$name" --data-path ".cache/$name" --model convnet \
      --batch-size 64 --lr 0.05 --wd 5e-4 --input-pipeline device "${flags[@]}"
done
