#!/usr/bin/env bash
# Reproduce docs/RESULTS.md end to end: train every row of the CUHK03 pair-1 ablation,
# evaluate each with five metrics (official AP), then write the table and figures.
#
#   tools/reproduce.sh                 # from the repository root; resumable
#   PYTHON=.venv/bin/python tools/reproduce.sh
#   TRIES=1 tools/reproduce.sh         # also the extra runs of "What we tried" in RESULTS.md
#
# Rerunning skips finished work: training resumes from its last checkpoint (or
# returns at once when it reached --total_steps) and an evaluation whose JSON exists
# is not run again. Outputs: runs/cuhk03_pair1/<row>/eval_<metric>.json,
# runs/cuhk03_pair1/mgcam_rgbm/curve/step_<N>.json, docs/results_table.md, docs/figures/.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
DATA=../shared/data/cuhk03_pair1
RUNS=runs/cuhk03_pair1
ROWS="mscan_rgb mscan_rgbm mgcam_hard_rgbm mgcam_rgb mgcam_rgbm mgcam_siamese_rgbm"
METRICS="euclidean kissme rerank xqda+rerank"   # xqda first (it saves the features)
CURVE_ROW=mgcam_rgbm                            # rank-1 over iterations for this row
CURVE_STEPS="100 200 300"                           # plus the final step (eval_euclidean.json)

train() {  # row [--total_steps=N]
  "$PY" tools/train.py --flagfile="flags/cuhk03_pair1_$1.flags" --progress=false "${@:2}"
}

evaluate() {  # row [metrics] [model_dir]
  local dir=${3:-$RUNS/$1}
  if [ ! -f "$dir/eval_xqda.json" ] || [ ! -f "$dir/features.npz" ]; then
    "$PY" tools/evaluate.py --model_dir="$dir" --data_dir=$DATA --layout=market1501 \
      --metric=xqda --ap=official --progress=false \
      --save_features="$dir/features.npz" --json_out="$dir/eval_xqda.json"
  fi
  for metric in ${2:-$METRICS}; do
    [ -f "$dir/eval_$metric.json" ] && continue
    "$PY" tools/evaluate.py --features="$dir/features.npz" --metric="$metric" \
      --ap=official --progress=false --json_out="$dir/eval_$metric.json"
  done
}

for row in $ROWS; do
  echo "=== $row $(date +%T)"
  if [ "$row" = "$CURVE_ROW" ]; then
    mkdir -p "$RUNS/$row/curve"
    for n in $CURVE_STEPS; do
      [ -f "$RUNS/$row/curve/step_$n.json" ] && continue
      train "$row" --total_steps="$n"
      "$PY" tools/evaluate.py --model_dir="$RUNS/$row" --data_dir=$DATA --layout=market1501 \
        --metric=euclidean --ap=official --progress=false \
        --json_out="$RUNS/$row/curve/step_$n.json"
    done
  fi
  train "$row"
  evaluate "$row"
done
echo "=== table $(date +%T)"
"$PY" tools/results_table.py --runs_dir=$RUNS --out_dir=docs --attention_row=$CURVE_ROW \
  --data_dir=$DATA

# What we tried when a claim did not hold (docs/RESULTS.md): variants of a table row,
# each "name row overrides...", trained to runs/cuhk03_pair1/tries/<name> and
# evaluated with Euclidean, XQDA and XQDA + re-ranking.
TRY_LIST=(
  "mgcam_rgbm_800 mgcam_rgbm --total_steps=800 --lr_step=540"
  "mscan_rgbm_800 mscan_rgbm --total_steps=800 --lr_step=540"
  "mgcam_rgbm_official mgcam_rgbm --region_loss=official"
  "mgcam_rgbm_notriplet mgcam_rgbm --triplet_weight=0"
  "mgcam_hard_rgbm_800 mgcam_hard_rgbm --total_steps=800 --lr_step=540"
  "mgcam_rgb_800 mgcam_rgb --total_steps=800 --lr_step=540"
)
if [ "${TRIES:-0}" = 1 ]; then
  for spec in "${TRY_LIST[@]}"; do
    read -r name row overrides <<<"$spec"
    echo "=== try $name $(date +%T)"
    # shellcheck disable=SC2086
    train "$row" --model_dir="$RUNS/tries/$name" $overrides
    evaluate "$row" "euclidean xqda+rerank" "$RUNS/tries/$name"
  done
  "$PY" tools/results_table.py --runs_dir=$RUNS/tries --out_dir=$RUNS/tries --no-figures \
    --rows="$(for spec in "${TRY_LIST[@]}"; do printf '%s,' "${spec%% *}"; done)"
fi
echo "=== done $(date +%T)"
