#!/usr/bin/env bash
# Pseudo-label training: a student trained on the FULL real train split with labels
# from a CSV (image_path, pseudo_label_class_index), evaluated on the real val split.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$REPO/.venv/bin/python" ]]; then PYTHON="$REPO/.venv/bin/python"; else PYTHON=python3; fi
fi

usage() {
  cat <<'EOF2'
Usage: run_pseudo.sh -d DATASET --csv FILE -r DATA_ROOT [options] [-- extra python -m train flags]
  -d NAME          dataset (the data is DATA_ROOT/NAME)
  --csv FILE       pseudo-label CSV (python -m tools.make_pseudo_labels writes one)
  -r DIR           data root
  -e MODEL         student model                         [resnet18]
  -z EPOCHS        training epochs                        [dataset default]
  -x ID            experiment id: runs/<dataset>/<ID>/train  [pseudo]
  -u GPUS          GPU index or comma list (several = torchrun)
  --device D       auto, cpu or cuda                      [auto]
  --out DIR        output root                            [runs]
  -h, --help       this message
Flags after -- go to `python -m train` unchanged (e.g. -- --online-teacher DIR --allow-unmatched).
EOF2
}

die() { echo "$(basename "$0"): $*" >&2; echo "($(basename "$0") --help lists the options)" >&2; exit 2; }

DATASET=""; CSV=""; ROOT=""; MODEL=resnet18; EPOCHS=""; EXP=pseudo; GPUS=""; DEVICE=auto; OUT=runs
EXTRA=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    -d|--csv|-r|-e|-z|-x|-u|--device|--out)
      [[ $# -ge 2 ]] || die "$1 needs a value"
      case "$1" in
        -d) DATASET="$2" ;; --csv) CSV="$2" ;; -r) ROOT="$2" ;; -e) MODEL="$2" ;; -z) EPOCHS="$2" ;;
        -x) EXP="$2" ;; -u) GPUS="$2" ;; --device) DEVICE="$2" ;; --out) OUT="$2" ;;
      esac
      shift 2 ;;
    -h|--help) usage; exit 0 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) die "unknown option $1 (flags for python -m train go after --)" ;;
  esac
done

# per-dataset defaults: epochs, batch size, optimiser (SGD with cosine decay on real data)
case "$DATASET" in
  cifar10|cifar100) DEF_EPOCHS=200; BATCH=128; LR=0.1; WD=0.0005 ;;
  tiny-imagenet) DEF_EPOCHS=100; BATCH=128; LR=0.1; WD=0.0005 ;;
  imagenette|imagewoof) DEF_EPOCHS=100; BATCH=64; LR=0.1; WD=0.0001 ;;
  imagenet|imagefolder|digits) DEF_EPOCHS=90; BATCH=128; LR=0.1; WD=0.0001 ;;
  "") die "-d DATASET is required" ;;
  *) die "-d $DATASET: unknown dataset" ;;
esac
[[ -n "$CSV" ]] || die "--csv FILE is required"
[[ -f "$CSV" ]] || die "--csv $CSV: file not found"
[[ -n "$ROOT" ]] || die "-r DATA_ROOT is required"
[[ -d "$ROOT/$DATASET/train" ]] || die "$ROOT/$DATASET/train does not exist; prepare the dataset (see README)"
EPOCHS="${EPOCHS:-$DEF_EPOCHS}"
[[ "$EPOCHS" =~ ^[0-9]+$ && "$EPOCHS" -ge 1 ]] || die "-z $EPOCHS: expected a positive integer"
case "$DEVICE" in auto|cpu|cuda) ;; *) die "--device $DEVICE: expected auto, cpu or cuda" ;; esac

LAUNCH=("$PYTHON" -m)
if [[ -n "$GPUS" ]]; then
  [[ "$GPUS" =~ ^[0-9]+(,[0-9]+)*$ ]] || die "-u $GPUS: expected a GPU index or a comma list"
  export CUDA_VISIBLE_DEVICES="$GPUS"
  [[ "$DEVICE" == auto ]] && DEVICE=cuda
  NPROC=$(awk -F, '{print NF}' <<<"$GPUS")
  [[ "$NPROC" -gt 1 ]] && LAUNCH=("$PYTHON" -m torch.distributed.run --standalone --nproc_per_node "$NPROC" -m)
fi

cd "$REPO"
EXP_DIR="$OUT/$DATASET/$EXP"
start=$SECONDS
"${LAUNCH[@]}" train --train-dir "$ROOT/$DATASET/train" --pseudo-label-csv "$CSV" --data-path "$ROOT/$DATASET" \
  --dataset "$DATASET" --model "$MODEL" --epochs "$EPOCHS" --batch-size "$BATCH" --opt sgd --lr "$LR" --wd "$WD" \
  --device "$DEVICE" --output-dir "$EXP_DIR/train" "${EXTRA[@]+"${EXTRA[@]}"}"
"$PYTHON" -m tools.summarize_run append --experiment-dir "$EXP_DIR" --experiment "$EXP" \
  --results-csv "$OUT/results.csv" --time "train=$((SECONDS - start))"
