#!/usr/bin/env bash
# WMDD pipeline orchestrator: pretrain -> recover -> relabel -> train, through disk.
# Flags follow WMDD's official run.sh; see ./run.sh --help and the README.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$REPO/.venv/bin/python" ]]; then PYTHON="$REPO/.venv/bin/python"; else PYTHON=python3; fi
fi

usage() {
  cat <<'EOF'
Usage: ./run.sh -r DATA_ROOT [options]        (dataset folder = DATA_ROOT/<dataset>)
       ./run.sh --demo                       (digits: the whole pipeline in a few minutes on CPU)

WMDD flags:
  -x ID      experiment id (runs/<dataset>/<ID>/{recover,relabel,train})      [exp]
  -y ID      teacher id (runs/teachers/<dataset>_<model>/<ID>/)               [t0]
  -d NAME    dataset: cifar10 cifar100 tiny-imagenet imagenette imagewoof imagenet digits imagefolder [cifar10]
  -m MODEL   teacher model (resnet18 resnet50 resnet101 convnet convnet_in vit_tiny)   [resnet18]
  -e MODEL   student model                                                   [resnet18]
  -r DIR     data root; the dataset is DIR/<dataset>
  -u GPUS    GPU index or comma list (several = torchrun --nproc_per_node N)
  -c IPC     images per class                                                [10]
  -p         pretrain the teacher first (otherwise it must exist)
  -n         per-class BatchNorm statistics (on by default for wmdd/wmdd-paper; turns it on for sre2l)
  -w         Wasserstein-barycenter feature matching (on by default for wmdd/wmdd-paper; on for sre2l)
             (wmdd without them: --recover-args "--no-wb --no-per-class-bn", as python -m recover)
  -b R_BN    BatchNorm term weight (lambda)                                  [configs/<dataset>.yaml]
  -a LR      recover learning rate                                           [configs/<dataset>.yaml]
  -t R_CE    cross-entropy term weight                                        [method default]
  -i ITERS   recover iterations                                              [configs/<dataset>.yaml]
  -z EPOCHS  relabel and train epochs                                        [configs/<dataset>.yaml]
  -g         debug: tiny settings (20 train / 10 val images per class, recover: max(20, 4 x IPC) train
             images per class; at most 10 classes, 2 teacher epochs, 5 recover iterations, 2 epochs;
             a smoke test of a few minutes on CPU)
Long options:
  --method NAME                     recover method (python -m recover --help lists them:
                                    wmdd wmdd-paper sre2l random-real dm ddm ...) [wmdd]; the same
                                    defaults as python -m recover --method NAME (wmdd: medoid start,
                                    multi-formation factor 2; wmdd-paper: WMDD as published)
  --protocol fkd|dsa|dance          evaluation: fkd = teacher soft labels (relabel + train) [fkd];
                                    dsa = the DM family's hard labels + DSA (train --protocol dsa, no
                                    relabel; no teacher needed for methods without one); dance = dsa
                                    with DANCE's CutMix and schedule (train --protocol dance).
                                    fkd decodes a multi-formation set (recover --factor F) first
                                    (python -m tools.decode_images into EXP/decoded)
  --device auto|cpu|cuda            [auto]
  --out DIR                         output root [runs/ in the repository]
  --seed N                          seed of recover, relabel and train [0]
  --input-size PX                   teacher/student input side (default: the dataset's native size)
  --classes N|FILE                  class subset for every stage: the first N class folders (sorted), or
                                    the names listed in FILE [all; -g: the first 10]
  --teacher-epochs N                pretrain epochs (default: configs/<dataset>.yaml)
  --batch-size N                    relabel/train batch size (default: min(100, distilled images))
  --pretrain-args "..."             extra flags for python -m pretrain (likewise --recover-args,
                                    --relabel-args, --train-args), e.g. --train-args "--val-every 50"
  --demo                            digits demo: WMDD, random real and random real at WMDD's pixel
                                    budget (recover --factor 2) at IPC 10, then the fair-score tables
                                    (top-1 minus each random baseline's, same soft labels)
  -h, --help                        this message
Outputs: runs/<dataset>/<ID>/train/results.json and one row per run in <out>/results.csv.
A finished stage (manifest present, same arguments) is skipped, so a killed run.sh resumes.
EOF
}

die() {
  echo "run.sh: $*" >&2
  echo "(./run.sh --help lists the options)" >&2
  exit 2
}

EXP=exp; TEACHER_ID=t0; DATASET=cifar10; TMODEL=resnet18; SMODEL=resnet18; ROOT=""; GPUS=""; IPC=10
PRETRAIN=0; PCBN=0; WB=0; RBN=""; RLR=""; RCE=""; ITERS=""; EPOCHS=""; DEBUG=0
SMODEL_GIVEN=""; METHOD=wmdd; PROTOCOL=fkd; DEVICE=auto; OUT="$REPO/runs"; SEED=0; INPUT_SIZE=""; TEACHER_EPOCHS=""; BATCH=""; DEMO=0; CLASSES=""
declare -A EXTRA=([pretrain]="" [recover]="" [relabel]="" [train]="")

short=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --method|--protocol|--device|--out|--seed|--input-size|--classes|--teacher-epochs|--batch-size|--pretrain-args|--recover-args|\
    --relabel-args|--train-args)
      [[ $# -ge 2 ]] || die "$1 needs a value"
      case "$1" in
        --method) METHOD="$2" ;; --protocol) PROTOCOL="$2" ;; --device) DEVICE="$2" ;; --out) OUT="$2" ;; --seed) SEED="$2" ;;
        --input-size) INPUT_SIZE="$2" ;; --classes) CLASSES="$2" ;; --teacher-epochs) TEACHER_EPOCHS="$2" ;; --batch-size) BATCH="$2" ;;
        *) name="${1#--}"; EXTRA[${name%-args}]="$2" ;;
      esac
      shift 2 ;;
    --demo) DEMO=1; shift ;;
    --help|-h) usage; exit 0 ;;
    --*) die "unknown option $1" ;;
    *) short+=("$1"); shift ;;
  esac
done
set -- "${short[@]+"${short[@]}"}"
while getopts ":x:y:d:m:e:r:u:c:pnwb:a:t:i:z:g" opt; do
  case "$opt" in
    x) EXP="$OPTARG" ;; y) TEACHER_ID="$OPTARG" ;; d) DATASET="$OPTARG" ;; m) TMODEL="$OPTARG" ;;
    e) SMODEL="$OPTARG"; SMODEL_GIVEN=1 ;; r) ROOT="$OPTARG" ;; u) GPUS="$OPTARG" ;; c) IPC="$OPTARG" ;;
    p) PRETRAIN=1 ;; n) PCBN=1 ;; w) WB=1 ;; b) RBN="$OPTARG" ;; a) RLR="$OPTARG" ;; t) RCE="$OPTARG" ;;
    i) ITERS="$OPTARG" ;; z) EPOCHS="$OPTARG" ;; g) DEBUG=1 ;;
    :) die "option -$OPTARG needs a value" ;;
    *) die "unknown option -$OPTARG" ;;
  esac
done
shift $((OPTIND - 1))
[[ $# -eq 0 ]] || die "unexpected argument $1"

is_int() { [[ "$1" =~ ^[0-9]+$ && "$1" -ge 1 ]]; }
is_num() { [[ "$1" =~ ^[0-9]*\.?[0-9]+([eE][-+]?[0-9]+)?$ ]]; }
case "$PROTOCOL" in fkd|dsa|dance) ;; *) die "--protocol $PROTOCOL: expected fkd, dsa or dance" ;; esac
case "$DEVICE" in auto|cpu|cuda) ;; *) die "--device $DEVICE: expected auto, cpu or cuda" ;; esac
is_int "$IPC" || die "-c $IPC: IPC must be a positive integer"
is_int "$SEED" || [[ "$SEED" == 0 ]] || die "--seed $SEED: expected a non-negative integer"
for pair in "i:$ITERS" "z:$EPOCHS" "input-size:$INPUT_SIZE" "teacher-epochs:$TEACHER_EPOCHS" "batch-size:$BATCH"; do
  value="${pair#*:}"; [[ -z "$value" ]] || is_int "$value" || die "${pair%%:*} $value: expected a positive integer"
done
for pair in "b:$RBN" "a:$RLR" "t:$RCE"; do
  value="${pair#*:}"; [[ -z "$value" ]] || is_num "$value" || die "-${pair%%:*} $value: expected a number"
done
if [[ -n "$GPUS" ]]; then
  [[ "$GPUS" =~ ^[0-9]+(,[0-9]+)*$ ]] || die "-u $GPUS: expected a GPU index or a comma list like 0,1"
  [[ "$DEVICE" != cpu ]] || die "-u $GPUS asks for GPUs but --device is cpu"
fi

# paths given relative to where run.sh was called from, before it moves to the repository
absolute() { if [[ -z "$1" || "$1" == /* ]]; then echo "$1"; else echo "$PWD/$1"; fi; }
ROOT="$(absolute "$ROOT")"; OUT="$(absolute "$OUT")"
[[ "$CLASSES" =~ ^[0-9]+$ ]] || CLASSES="$(absolute "$CLASSES")"
cd "$REPO"
datasets="$("$PYTHON" -c 'from common.datasets import dataset_names; print(" ".join(dataset_names()))')"
methods="$("$PYTHON" -c 'from recover.methods import method_names; print(" ".join(method_names()))')"
[[ " $methods " == *" $METHOD "* ]] || die "--method $METHOD: unknown method (registered: $methods)"
needs_teacher="$("$PYTHON" -c 'import sys; from recover.methods import get_method
print(int(get_method(sys.argv[1]).requires_teacher))' "$METHOD")"

if [[ "$DEMO" == 1 ]]; then
  DATASET=digits; TMODEL=convnet; SMODEL=convnet; IPC=10; BATCH="${BATCH:-25}"
  ROOT="$OUT/data"
  "$PYTHON" -m common.prepare digits "$ROOT/digits"
fi
[[ " $datasets " == *" $DATASET "* ]] || die "-d $DATASET: unknown dataset (known: $datasets)"
[[ -n "$ROOT" ]] || die "-r DATA_ROOT is required (the dataset is DATA_ROOT/$DATASET)"
DATA="$ROOT/$DATASET"
[[ -d "$DATA" ]] || die "data root $DATA does not exist; prepare it with python -m common.prepare (see README)"
if [[ "$DEBUG" == 1 && -z "$CLASSES" && -d "$DATA/train" ]]; then
  [[ $(find "$DATA/train" -mindepth 1 -maxdepth 1 -type d ! -name '.*' | wc -l) -gt 10 ]] && CLASSES=10
fi
SUBSET=()
[[ -n "$CLASSES" ]] && SUBSET=(--classes "$CLASSES")

if [[ -n "$GPUS" ]]; then
  export CUDA_VISIBLE_DEVICES="$GPUS"
  [[ "$DEVICE" == auto ]] && DEVICE=cuda
fi
NPROC=1
[[ -n "$GPUS" ]] && NPROC=$(awk -F, '{print NF}' <<<"$GPUS")
if [[ "$NPROC" -gt 1 ]]; then
  LAUNCH=("$PYTHON" -m torch.distributed.run --standalone --nproc_per_node "$NPROC" -m)
else
  LAUNCH=("$PYTHON" -m)
fi
CONFIG=()
[[ -f "$REPO/configs/$DATASET.yaml" ]] && CONFIG=(--config "$REPO/configs/$DATASET.yaml")

declare -A SECONDS_OF=()
stage() {  # stage NAME ARGS...: run python -m NAME (plus its --NAME-args) with the launcher, record its wall time
  local name="$1"; shift
  local extra
  read -r -a extra <<<"${EXTRA[$name]}"
  echo "==> $name"
  local out="" prev=""
  for arg in "$@"; do [[ "$prev" == --output-dir ]] && out="$arg"; prev="$arg"; done
  # OUT/.wall_seconds holds the seconds spent on this stage so far, so a stage resumed
  # after a kill reports the sum of its parts; a ticker keeps it current while it runs
  local before=0 start=$SECONDS ticker="" status=0
  [[ -n "$out" && -f "$out/.wall_seconds" ]] && before=$(<"$out/.wall_seconds")
  [[ "$before" =~ ^[0-9]+$ ]] && before=$((10#$before)) || before=0
  if [[ -n "$out" && -f "$out/manifest.json" ]]; then
    # a stage that was already finished does no work: it keeps the time it took
    "${LAUNCH[@]}" "$name" "$@" "${extra[@]+"${extra[@]}"}"
    [[ "$before" == 0 ]] || SECONDS_OF[$name]=$before
    return
  fi
  if [[ -n "$out" ]]; then
    ( while sleep 5 && kill -0 $$ 2>/dev/null; do
        [[ -d "$out" ]] && echo $((before + SECONDS - start)) >"$out/.wall_seconds"
      done ) >/dev/null 2>&1 &
    ticker=$!
  fi
  "${LAUNCH[@]}" "$name" "$@" "${extra[@]+"${extra[@]}"}" || status=$?
  if [[ -n "$ticker" ]]; then kill "$ticker" 2>/dev/null || true; wait "$ticker" 2>/dev/null || true; fi
  SECONDS_OF[$name]=$((before + SECONDS - start))
  [[ -n "$out" && -d "$out" ]] && echo "${SECONDS_OF[$name]}" >"$out/.wall_seconds"
  return "$status"
}

# run_experiment EXP_ID METHOD PCBN WB: teacher (shared) then recover -> relabel -> train -> summary
run_experiment() {
  local exp="$1" method="$2" pcbn="$3" wb="$4"
  local teacher_dir="$OUT/teachers/${DATASET}_${TMODEL}/$TEACHER_ID"
  local exp_dir="$OUT/$DATASET/$exp"
  SECONDS_OF=()

  local pre=(--dataset "$DATASET" --data-path "$DATA" --model "$TMODEL" --output-dir "$teacher_dir"
             --device "$DEVICE" "${SUBSET[@]+"${SUBSET[@]}"}" "${CONFIG[@]+"${CONFIG[@]}"}")
  [[ -n "$INPUT_SIZE" ]] && pre+=(--input-size "$INPUT_SIZE")
  [[ -n "$TEACHER_EPOCHS" ]] && pre+=(--epochs "$TEACHER_EPOCHS")
  [[ "$DEBUG" == 1 ]] && pre+=(--train-per-class 20 --val-per-class 10)
  [[ "$DEBUG" == 1 && -z "$TEACHER_EPOCHS" ]] && pre+=(--epochs 2)
  if [[ "$PRETRAIN" == 1 ]]; then
    stage pretrain "${pre[@]}"
  elif [[ ! -f "$teacher_dir/manifest.json" && ( "$PROTOCOL" == fkd || "$needs_teacher" == 1 ) ]]; then
    die "teacher $teacher_dir not found; add -p to pretrain it"
  fi

  local rec=(--data-path "$DATA" --output-dir "$exp_dir/recover" --method "$method"
             --ipc "$IPC" --seed "$SEED" --device "$DEVICE" "${SUBSET[@]+"${SUBSET[@]}"}" "${CONFIG[@]+"${CONFIG[@]}"}")
  if [[ -f "$teacher_dir/manifest.json" ]]; then
    rec+=(--teacher "$teacher_dir")
  else
    rec+=(--dataset "$DATASET")
    [[ -n "$INPUT_SIZE" ]] && rec+=(--input-size "$INPUT_SIZE")
  fi
  [[ -n "$RBN" ]] && rec+=(--r-bn "$RBN")
  [[ -n "$RLR" ]] && rec+=(--lr "$RLR")
  [[ -n "$RCE" ]] && rec+=(--r-ce "$RCE")
  [[ -n "$ITERS" ]] && rec+=(--iterations "$ITERS")
  # 5 iterations: wmdd's default multi-formation makes each one 4 x the published WMDD's work
  [[ "$DEBUG" == 1 && -z "$ITERS" ]] && rec+=(--iterations 5)
  # (at least 4 x IPC real images per class: wmdd's 2x2 tiles start from that many medoids)
  [[ "$DEBUG" == 1 ]] && rec+=(--train-per-class $(( IPC * 4 > 20 ? IPC * 4 : 20 )))
  [[ "$wb" == 1 ]] && rec+=(--wb)
  [[ "$pcbn" == 1 ]] && rec+=(--per-class-bn)
  stage recover "${rec[@]}"

  local images="$exp_dir/recover/images"
  local count batch="$BATCH"
  local epochs=()
  [[ -n "$EPOCHS" ]] && epochs=(--epochs "$EPOCHS")
  [[ "$DEBUG" == 1 && -z "$EPOCHS" ]] && epochs=(--epochs 2)
  if [[ "$PROTOCOL" != fkd ]]; then
    local tr=(--protocol "$PROTOCOL" --images "$images" --dataset "$DATASET" --data-path "$DATA" --output-dir "$exp_dir/train"
              --seed "$SEED" --device "$DEVICE" "${epochs[@]+"${epochs[@]}"}" "${SUBSET[@]+"${SUBSET[@]}"}"
              "${CONFIG[@]+"${CONFIG[@]}"}")
    [[ -n "$SMODEL_GIVEN" ]] && tr+=(--model "$SMODEL")
    [[ -n "$BATCH" ]] && tr+=(--batch-size "$BATCH")
    [[ -n "$INPUT_SIZE" ]] && tr+=(--input-size "$INPUT_SIZE")
    [[ "$DEBUG" == 1 ]] && tr+=(--val-per-class 10 --val-every 1)
    stage train "${tr[@]}"
    summarize "$exp" "$exp_dir" "$teacher_dir"
    return
  fi
  # a multi-formation set (recover --factor F > 1) is decoded into ordinary images first:
  # relabel and FKD training cut their views from whole images (python -m tools.decode_images)
  local factor
  factor=$("$PYTHON" -c 'import sys; from common.multiformation import recorded_factor
print(recorded_factor(sys.argv[1]))' "$images")
  if [[ "$factor" != 1 ]]; then
    echo "==> decode (multi-formation factor $factor)"
    "$PYTHON" -m tools.decode_images --images "$images" --output-dir "$exp_dir/decoded"
    images="$exp_dir/decoded/images"
  fi
  count=$(find "$images" -name '*.png' | wc -l)
  [[ -n "$batch" ]] || batch=$(( count < 100 ? count : 100 ))
  stage relabel --teacher "$teacher_dir" --images "$images" --output-dir "$exp_dir/relabel" --batch-size "$batch" \
    --seed "$SEED" --device "$DEVICE" "${epochs[@]+"${epochs[@]}"}" "${CONFIG[@]+"${CONFIG[@]}"}"
  local tr=(--images "$images" --soft-labels "$exp_dir/relabel" --teacher "$teacher_dir" --data-path "$DATA"
            --model "$SMODEL" --output-dir "$exp_dir/train" --batch-size "$batch" --seed "$SEED" --device "$DEVICE"
            "${epochs[@]+"${epochs[@]}"}" "${SUBSET[@]+"${SUBSET[@]}"}" "${CONFIG[@]+"${CONFIG[@]}"}")
  [[ "$DEBUG" == 1 ]] && tr+=(--val-per-class 10 --val-every 1)
  stage train "${tr[@]}"
  summarize "$exp" "$exp_dir" "$teacher_dir"
}

summarize() {  # summarize EXP_ID EXP_DIR TEACHER_DIR: print the run and append its row to results.csv
  local times=()
  for s in "${!SECONDS_OF[@]}"; do times+=("$s=${SECONDS_OF[$s]}"); done
  # the experiment has finished: a results file that cannot take the row is reported, not fatal
  "$PYTHON" -m tools.summarize_run append --experiment-dir "$2" --teacher-dir "$3" \
    --experiment "$1" --results-csv "$OUT/results.csv" --time "${times[@]+"${times[@]}"}" ||
    echo "run.sh: warning: $1 finished ($2/train/results.json) but its row was not added to $OUT/results.csv" >&2
}

if [[ "$DEMO" == 1 ]]; then
  PRETRAIN=1
  run_experiment demo-wmdd wmdd 1 1
  PRETRAIN=0
  run_experiment demo-random-real random-real 0 0
  EXTRA[recover]="${EXTRA[recover]} --factor 2"  # random real at WMDD's pixel budget (4 tiles per image)
  run_experiment demo-random-real-f2 random-real 0 0
  echo
  for baseline in demo-random-real demo-random-real-f2; do
    "$PYTHON" -m tools.summarize_run table --results-csv "$OUT/results.csv" --baseline "$baseline" \
      demo-wmdd demo-random-real demo-random-real-f2 ||
      echo "warning: no fair-score table (see the error above); the runs are complete" >&2
    echo
  done
  echo "synthetic images: $OUT/$DATASET/demo-wmdd/recover/grid.png"
else
  run_experiment "$EXP" "$METHOD" "$PCBN" "$WB"
fi
