#!/usr/bin/env bash
# Reproduce docs/RESULTS.md end to end: train every row of the CUHK03 pair-1 ablation
# (several seeds for the rows the comparisons rest on), evaluate each, then write the
# table, the intervals and the figures.
#
#   tools/reproduce.sh                      # from the repository root; resumable
#   PYTHON=.venv/bin/python RUNS=/work/runs/cuhk03_pair1 tools/reproduce.sh
#   PHASE=train tools/reproduce.sh          # trainings only (the long part)
#   TRIES=1 tools/reproduce.sh              # also the runs of "What we tried"
#
# Rerunning skips finished work: a training resumes from its last checkpoint (or
# returns at once when it reached --total_steps); an evaluation whose JSON exists is
# not run again. Runs go to $RUNS/<row>_s<seed>/.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
DATA=../shared/data/cuhk03_pair1
RUNS=${RUNS:-runs/cuhk03_pair1}
PHASE=${PHASE:-all}
# (row seed) in the order they train: the three rows of the main comparisons first.
QUEUE="mgcam_rgbm:0 mscan_rgbm:0 mgcam_siamese_rgbm:0 mgcam_rgb:0 mgcam_hard_rgbm:0 mscan_rgb:0
       mgcam_rgbm:1 mscan_rgbm:1 mgcam_siamese_rgbm:1 mgcam_rgbm:2 mscan_rgbm:2
       mgcam_siamese_rgbm:2"

train() {  # row seed [extra flags...]
  local row=$1 seed=$2 init=()
  [ "$row" = mgcam_siamese_rgbm ] && init=(--init_from="$RUNS/mgcam_rgbm_s$seed")
  echo "=== train ${row}_s$seed ${*:3} $(date +%T)"
  "$PY" tools/train.py --flagfile="flags/cuhk03_pair1_$row.flags" --progress=false \
    --seed="$seed" --model_dir="$RUNS/${row}_s$seed" "${init[@]}" "${@:3}"
}

for item in $QUEUE; do
  train "${item%%:*}" "${item##*:}"
done
# bfloat16 against float32: one row at full length in float32 (docs/RESULTS.md).
echo "=== train mgcam_rgbm_s0_float32 $(date +%T)"
"$PY" tools/train.py --flagfile=flags/cuhk03_pair1_mgcam_rgbm.flags --progress=false \
  --seed=0 --model_dir="$RUNS/mgcam_rgbm_s0_float32" --mixed_precision=float32
[ "$PHASE" = train ] && { echo "=== trained $(date +%T)"; exit 0; }
echo "=== done $(date +%T)"
