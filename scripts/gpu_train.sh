#!/usr/bin/env bash
# Train ECFusion's three tasks on a GPU machine in one call: every cross-validation fold (cv_folds.json) and the
# final weights (every case), with the paper's schedule (50 epochs, 256x256 = 128-pixel patches upsampled) and the
# next-round recipe (model card, "Next training round"); then scripts/benchmark.py --device cuda and the GPU tests.
# Weights, logs and timings go to $OUT (the device tool's result folder; ./gpu_out when $OUT is unset).
#
#   bash scripts/gpu_train.sh --data .gpu_data/aanlib.npz [options] [-- extra `ecfusion train` options]
#   bash scripts/gpu_train.sh --data .gpu_data/aanlib.npz --smoke          # dry run on the CPU: 1 short epoch, few images
#
# The device machine (see the model card) has python3 with torch+CUDA, numpy, scipy, scikit-image, tqdm and pytest,
# but NOT SimpleITK, and cannot download: so training reads the pairs packed into one .npz
# (`python scripts/pack_pairs.py --data ../shared/data/aanlib --out .gpu_data/aanlib.npz`, 22 MiB; .gpu_data/ is
# git-ignored and must be named in the call's `carry`). Nothing is installed unless wheels are carried in .whl/
# (`--no-index`, into /tmp/site). The benchmark and the GPU tests need SimpleITK (its wheel is ~50 MB: with the tree
# and the data that is over a call's 64 MiB): without it they are skipped and the summary says so - run
# `--stage checks` in a second call carrying .whl/ (SimpleITK) instead of the data.
#
# Options:
#   --data PATH        packed .npz (or a PNG folder where SimpleITK exists)                       (required for training)
#   --tasks "T ..."    default "CT-MRI PET-MRI SPECT-MRI"
#   --folds SPEC       all (default) | none | "0 2" : which cross-validation folds to train (each holds its fold out)
#   --no-final         skip the final runs (--all-cases, every case, no validation)
#   --epochs N         default 50 (the paper)
#   --init W           start every run from these weights ('bundled' = the shipped weights of the task); default: scratch
#   --parallel N       training runs at once on the one GPU (default: all of them; each uses 1 CPU thread for validation)
#   --budget-min M     stop training after M minutes in all (runs are killed, the best weights so far are kept), so
#                      that packing the results fits in the call (device: one command may run 10 minutes)
#   --stage S          all (default) | train | checks (benchmark + GPU tests only)
#   --device D         default cuda (smoke: cpu)
#   --smoke            CPU dry run: device cpu, 1 epoch of 2 steps at 128x128, 2 images per case, fold 0 + final
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
OUT_DIR="${OUT:-$ROOT/gpu_out}"
DATA=""; TASKS="CT-MRI PET-MRI SPECT-MRI"; FOLDS="all"; FINAL=1; EPOCHS=50; INIT=""; PARALLEL=0; BUDGET=""
STAGE="all"; DEVICE="cuda"; SMOKE=0; EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --data) DATA="$2"; shift 2 ;;
    --tasks) TASKS="$2"; shift 2 ;;
    --folds) FOLDS="$2"; shift 2 ;;
    --no-final) FINAL=0; shift ;;
    --epochs) EPOCHS="$2"; shift 2 ;;
    --init) INIT="$2"; shift 2 ;;
    --parallel) PARALLEL="$2"; shift 2 ;;
    --budget-min) BUDGET="$2"; shift 2 ;;
    --stage) STAGE="$2"; shift 2 ;;
    --device) DEVICE="$2"; shift 2 ;;
    --smoke) SMOKE=1; shift ;;
    --) shift; EXTRA=("$@"); break ;;
    -h|--help) sed -n '2,35p' "$0"; exit 0 ;;
    *) echo "gpu_train.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$STAGE" in all|train|checks) ;; *) echo "gpu_train.sh: --stage all|train|checks" >&2; exit 2 ;; esac
[ -n "$DATA" ] && DATA="$(realpath -m -- "$DATA")"  # relative to where the script was called from
cd "$ROOT"

# The recipe of the next training round (model card). Extra options after `--` are appended (later ones win).
RECIPE=(--intensity-weight 1.0 --ssim-weight 1.0 --ssim-reference variance --salient-weight 2.0 --ema 0.999
        --lr 2e-4 --lr-schedule cosine --warmup-steps 500 --clip-grad 1.0 --seed 0 --val-every 5 --threads 1)
SCHEDULE=(--epochs "$EPOCHS")
if [ "$SMOKE" = 1 ]; then
  DEVICE="cpu"; EPOCHS=1; [ "$FOLDS" = all ] && FOLDS="0"
  SCHEDULE=(--epochs 1 --steps-per-epoch 2 --no-upsample --val-every 1)
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/ecf-gpu-train.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT  # everything worth keeping is copied to $OUT
mkdir -p "$OUT_DIR" "$WORK/runs" "$WORK/logs"
SUMMARY="$WORK/summary.txt"
T0=$(date +%s)
say() { echo "[$(( $(date +%s) - T0 ))s] $*" | tee -a "$SUMMARY"; }

say "gpu_train.sh stage=$STAGE device=$DEVICE smoke=$SMOKE tasks=[$TASKS] folds=$FOLDS final=$FINAL epochs=$EPOCHS init=${INIT:-scratch}"
say "git: $(git -C "$ROOT" log --oneline -1 2>/dev/null || echo 'no git')"
# carried wheels (README of the device tool): installed offline into /tmp/site, nothing else is installed
if ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}" && say "installed carried wheels: $(ls .whl | tr '\n' ' ')"
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
"$PY" - <<'EOF' 2>&1 | tee -a "$SUMMARY"
import importlib, platform
import torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
for m in ("numpy", "scipy", "skimage", "tqdm", "SimpleITK", "pytest"):
    try:
        importlib.import_module(m); print(" ", m, "ok")
    except Exception as e:  # noqa: BLE001
        print(" ", m, "MISSING", type(e).__name__)
EOF
HAVE_SITK=0; "$PY" -c "import SimpleITK" 2>/dev/null && HAVE_SITK=1
if [ "$DEVICE" = cuda ] && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  say "ERROR: --device cuda but torch sees no GPU (use --smoke or --device cpu)"; cp "$SUMMARY" "$OUT_DIR/"; exit 1
fi

# ------------------------------------------------------------------ training
train_stage() {
  if [ -z "$DATA" ] || [ ! -e "$DATA" ]; then
    say "ERROR: --data '$DATA' not found (carry a packed .npz, see --help)"; return 1
  fi
  case "$DATA" in *.npz) ;; *) [ "$HAVE_SITK" = 1 ] || { say "ERROR: a PNG folder needs SimpleITK: pack it (scripts/pack_pairs.py)"; return 1; } ;; esac
  local data="$DATA"
  if [ "$SMOKE" = 1 ]; then
    data="$WORK/smoke.npz"
    "$PY" scripts/pack_pairs.py --data "$DATA" --out "$data" --per-case 2 >/dev/null || { say "ERROR: smoke subset failed"; return 1; }
    say "smoke data: 2 images per case -> $data"
  fi
  local jobs=()  # "name|args"
  for task in $TASKS; do
    local n; n=$("$PY" -c "import json,sys; print(len(json.load(open('ECFusionLib/weights/cv_folds.json'))['tasks'][sys.argv[1]]['folds']))" "$task") || return 1
    local ks=""
    case "$FOLDS" in all) ks=$(seq 0 $((n - 1))) ;; none) ks="" ;; *) ks="$FOLDS" ;; esac
    for k in $ks; do jobs+=("$task-fold$k|--holdout-fold $k"); done
    [ "$FINAL" = 1 ] && jobs+=("$task-final|--all-cases")
  done
  local par=$PARALLEL; [ "$par" -gt 0 ] 2>/dev/null || par=${#jobs[@]}
  say "training ${#jobs[@]} runs, $par at a time: $(printf '%s ' "${jobs[@]%%|*}")"
  local init=(); [ -n "$INIT" ] && init=(--init-weights "$INIT")
  local deadline=""; [ -n "$BUDGET" ] && deadline=$(( T0 + $("$PY" -c "import sys; print(int(float(sys.argv[1]) * 60))" "$BUDGET") ))
  printf 'run\tseconds\texit\n' > "$WORK/timings.tsv"
  local running=0
  for job in "${jobs[@]}"; do
    local name="${job%%|*}" split="${job#*|}"; local task="${name%%-fold*}"; task="${task%-final}"
    (
      t=$(date +%s); lim=""
      if [ -n "$deadline" ]; then lim=$(( deadline - t )); [ "$lim" -gt 5 ] || { printf '%s\t0\tskipped\n' "$name" >> "$WORK/timings.tsv"; exit 0; }; fi
      # shellcheck disable=SC2086
      ${lim:+timeout --signal=TERM $lim} "$PY" -m ECFusionLib.cli train --data "$data" --task "$task" --out "$WORK/runs/$name" \
        --device "$DEVICE" $split "${SCHEDULE[@]}" "${init[@]}" "${RECIPE[@]}" "${EXTRA[@]}" > "$WORK/logs/$name.log" 2>&1
      rc=$?; printf '%s\t%s\t%s\n' "$name" $(( $(date +%s) - t )) "$rc" >> "$WORK/timings.tsv"
    ) &
    running=$((running + 1))
    if [ "$running" -ge "$par" ]; then wait -n; running=$((running - 1)); fi
  done
  wait
  say "training done"; column -t "$WORK/timings.tsv" 2>/dev/null | tee -a "$SUMMARY" || cat "$WORK/timings.tsv" | tee -a "$SUMMARY"
  local failed; failed=$(awk -F'\t' 'NR > 1 && $3 != 0 && $3 != "skipped" {print $1 " (exit " $3 ")"}' "$WORK/timings.tsv")
  [ -n "$failed" ] && say "FAILED or cut by --budget-min (exit 124; its best weights so far are kept): $failed; see logs/<run>.log"
  for name in $(ls "$WORK/runs" 2>/dev/null); do
    local csv="$WORK/runs/$name/log.csv"
    [ -f "$csv" ] && { echo "== $name (log.csv: header, last validated row, last row)"; head -1 "$csv"
                       sed 1d "$csv" | grep -v ',,,' | tail -1; tail -1 "$csv"; } >> "$SUMMARY"
  done
  ! awk -F'\t' 'NR > 1 && $3 != 0 && $3 != 124 && $3 != "skipped" {bad = 1} END {exit !bad}' "$WORK/timings.tsv"
}

# ------------------------------------------------------------------ benchmark and GPU tests
checks_stage() {
  if [ "$HAVE_SITK" != 1 ]; then
    say "checks SKIPPED: SimpleITK is missing (the benchmark's phantom and the tests need it); rerun with --stage checks carrying .whl/ (SimpleITK wheel)"
    return 0
  fi
  if [ "$SMOKE" = 1 ]; then
    say "smoke: benchmark not run (it would be: $PY scripts/benchmark.py --device cuda)"
  else
    say "benchmark: $PY scripts/benchmark.py --device $DEVICE"
    local t; t=$(date +%s)
    timeout 300 "$PY" scripts/benchmark.py --device "$DEVICE" > "$WORK/benchmark.txt" 2>&1
    say "benchmark exit $? (124: cut at 300 s) in $(( $(date +%s) - t )) s"
    cp "$WORK/benchmark.txt" "$OUT_DIR/"
  fi
  say "GPU tests: pytest Testing/test_engine_fusion.py -k 'gpu or cuda'"
  timeout 120 "$PY" -m pytest Testing/test_engine_fusion.py -k "gpu or cuda" -q -p no:cacheprovider -rs > "$WORK/gpu_tests.txt" 2>&1
  say "GPU tests exit $?: $(tail -1 "$WORK/gpu_tests.txt")"
  cp "$WORK/gpu_tests.txt" "$OUT_DIR/"
}

status=0
if [ "$STAGE" != checks ]; then train_stage || status=1; fi
if [ "$STAGE" != train ]; then checks_stage || status=1; fi

# ------------------------------------------------------------------ results to $OUT (at most 8 files, 16 MiB each)
if [ -d "$WORK/runs" ] && [ -n "$(ls "$WORK/runs" 2>/dev/null)" ]; then
  (cd "$WORK" && for d in runs/*/; do n=$(basename "$d"); [ -f "$d/best.pt" ] && cp "$d/best.pt" "runs/$n/$n.pt"; done
   tar czf results.tar.gz --exclude='last.pt' --exclude='best.pt' runs logs timings.tsv summary.txt)
  split -b 15M -d "$WORK/results.tar.gz" "$OUT_DIR/results.tar.gz.part"
  say "results: $(ls "$OUT_DIR" | grep -c part) part(s) of $(du -h "$WORK/results.tar.gz" | cut -f1); unpack with: cat results.tar.gz.part* | tar xz"
fi
say "total wall time $(( $(date +%s) - T0 )) s, exit $status"
cp "$SUMMARY" "$OUT_DIR/summary.txt"
exit $status
