#!/usr/bin/env bash
# The distillation table: random real (also at WMDD's pixel budget: random-real-f2), SRe2L, WMDD as
# published with global BN (wmdd-global) and per-class BN (wmdd-paper), the toolkit's WMDD (wmdd:
# medoid start, factor 2) and any other registered method (dm, ddm, medoids), with identical
# relabel/train budgets, for each IPC and seed, through run.sh; random-real is always run (added to
# -m when missing), so the script ends with the mean +- std table, plots (tools/plot_results) and the
# fair-score table (tools/fair_scores: each method's improvement over random real, paired by seed).
# Finished runs are skipped on re-run. -P dsa evaluates under the DM family's hard-label DSA
# protocol. A method NAME-fF (e.g. random-real-f2, medoids-f2) is NAME with recover --factor F
# (multi-formation; run.sh decodes the tiles for the FKD protocol). Without -i each method runs its own
# recover iterations (wmdd/configs/<dataset>.yaml, else python -m wmdd.recover --help); -i gives all the same budget.
# -a passes recover flags to every method, the random-real baselines included (options that change which
# real images are drawn, e.g. --train-per-class, must reach them too); -A passes flags to every method but
# the random-real baselines (another method's options, e.g. --r-bn or --init medoid, which recover refuses
# for random-real).
#
# Without -e the student is a ConvNet under FKD and the protocol's own network (convnet_in) under -P dsa|dance.
#
# Usage: benchmarks/distill.sh -d DATASET -t TEACHER_DIR -r DATA_ROOT [-o OUT] [-e STUDENT]
#          [-c "10 50"] [-s "0 1 2"] [-i RECOVER_ITERATIONS] [-z EPOCHS] [-v VAL_EVERY] [-b R_BN]
#          [-m "random-real random-real-f2 sre2l wmdd-global wmdd-paper wmdd"]
#          [-a "recover flags, every method"] [-A "recover flags, not random-real"]
#          [-x "extra run.sh flags"] [-P fkd|dsa|dance]
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$REPO/.venv/bin/python}"
DATASET=""; TEACHER=""; ROOT=""; OUT="$REPO/.cache/bench-runs"; STUDENT=""; IPCS="10 50"; SEEDS="0 1 2"
ITERS=""; EPOCHS=200; VAL_EVERY=50; RBN=""; METHODS="random-real random-real-f2 sre2l wmdd-global wmdd-paper wmdd"; EXTRA=""; RARGS=""; MARGS=""; PROTOCOL=fkd
while getopts ":d:t:r:o:e:c:s:i:z:v:b:m:a:A:x:P:" opt; do
  case "$opt" in
    d) DATASET="$OPTARG" ;; t) TEACHER="$OPTARG" ;; r) ROOT="$OPTARG" ;; o) OUT="$OPTARG" ;;
    e) STUDENT="$OPTARG" ;; c) IPCS="$OPTARG" ;; s) SEEDS="$OPTARG" ;; i) ITERS="$OPTARG" ;;
    z) EPOCHS="$OPTARG" ;; v) VAL_EVERY="$OPTARG" ;; b) RBN="$OPTARG" ;; m) METHODS="$OPTARG" ;;
    a) RARGS="$OPTARG" ;; A) MARGS="$OPTARG" ;; x) EXTRA="$OPTARG" ;; P) PROTOCOL="$OPTARG" ;;
    *) sed -n '2,23p' "$0" >&2; exit 2 ;;
  esac
done
[[ -n "$TEACHER" && -d "$TEACHER" ]] && TEACHER="$(cd "$TEACHER" && pwd)"
cd "$REPO"  # as run.sh: relative -r and -o are relative to the repository
[[ -n "$DATASET" && -f "$TEACHER/manifest.json" && -d "$ROOT/$DATASET" ]] || { sed -n '2,23p' "$0" >&2; exit 2; }
[[ " $METHODS " == *" random-real "* ]] || METHODS="random-real $METHODS"

SUFFIX=""
[[ "$PROTOCOL" == fkd ]] || SUFFIX="-$PROTOCOL"
TMODEL=$("$PYTHON" -c "import json,sys; print(json.load(open(sys.argv[1]))['model'])" "$TEACHER/manifest.json")
mkdir -p "$OUT/teachers/${DATASET}_${TMODEL}"
ln -sfn "$TEACHER" "$OUT/teachers/${DATASET}_${TMODEL}/bench"
read -r -a extra <<<"$EXTRA"
# the student: -e, else a ConvNet for the FKD protocol; -P dsa/dance train their own (convnet_in)
student=()
if [[ -n "$STUDENT" ]]; then student=(-e "$STUDENT"); elif [[ "$PROTOCOL" == fkd ]]; then student=(-e convnet); fi
iters=()
[[ -n "$ITERS" ]] && iters=(-i "$ITERS")
for ipc in $IPCS; do
  for seed in $SEEDS; do
    for method in $METHODS; do
      base="$method" factor=""
      if [[ "$method" =~ ^(.+)-f([0-9]+)$ ]]; then  # NAME-fF: NAME with multi-formation factor F
        base="${BASH_REMATCH[1]}"; factor="--factor ${BASH_REMATCH[2]}"
      fi
      rargs="$RARGS $factor"
      [[ "$base" == random-real ]] || rargs="$rargs $MARGS"
      case "$base" in
        wmdd-global) flags=(--method wmdd-paper); rargs="$rargs --no-per-class-bn" ;;
        *) flags=(--method "$base") ;;
      esac
      [[ -n "$RBN" && "$base" =~ ^(wmdd|wmdd-paper|wmdd-global|sre2l)$ ]] && flags+=(-b "$RBN")
      echo "=== $DATASET IPC $ipc seed $seed $method"
      "$REPO/run.sh" -d "$DATASET" -r "$ROOT" -m "$TMODEL" "${student[@]+"${student[@]}"}" -y bench -c "$ipc" "${iters[@]+"${iters[@]}"}" \
        -z "$EPOCHS" --seed "$seed" --out "$OUT" -x "$method-ipc$ipc-s$seed$SUFFIX" --device cpu \
        --protocol "$PROTOCOL" --train-args "--val-every $VAL_EVERY" --recover-args "$rargs" "${flags[@]}" \
        "${extra[@]+"${extra[@]}"}"
    done
  done
done
"$PYTHON" -m wmdd.tools.plot_results --csv "$OUT/results.csv" --out "$OUT/plots" --table
echo
echo "fair scores (vs random real: paired by seed, same teacher, labels and student budget):"
"$PYTHON" -m wmdd.tools.fair_scores --csv "$OUT/results.csv"
