#!/usr/bin/env bash
# Reproduce docs/RESULTS.md end to end: train every row of the CUHK03 pair-1 ablation
# (several seeds for the rows the comparisons rest on), evaluate each, then write the
# table, the intervals and the figures.
#
#   tools/reproduce.sh                      # from the repository root; resumable
#   PYTHON=.venv/bin/python RUNS=/work/runs/cuhk03_pair1 tools/reproduce.sh
#   PHASE=train tools/reproduce.sh          # trainings only (the long part)
#   PHASE=evaluate tools/reproduce.sh       # evaluate the finished runs, table, preset
#
# Rerunning skips finished work: a training resumes from its last checkpoint (or
# returns at once when it reached --total_steps); an evaluation whose JSON exists is
# not run again. Runs go to $RUNS/<row>_s<seed>/, their records to $RECORDS/<row>_s<seed>/;
# the table is made from every record there, this machine's runs and earlier ones.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
DATA=../shared/data/cuhk03_pair1
RUNS=${RUNS:-runs/cuhk03_pair1}
# Each evaluated run's record (tools/run_record.py: configs, evaluations, scalars; no
# weights), committed, so that the table keeps the runs of machines since replaced.
RECORDS=${RECORDS:-docs/results/cuhk03_pair1}
PHASE=${PHASE:-all}
# (row seed) in the order they train: two seeds of the three rows the main comparisons
# rest on (two give a spread), the Siamese stage 2 right after the stage-1 run it starts
# from (so that a session that ends mid-queue leaves whole seeds), then the one-seed
# ablation rows (so that every row has a number before any row has a third), then seed 2.
QUEUE="mgcam_rgbm:0 mgcam_siamese_rgbm:0 mscan_rgbm:0
       mgcam_rgbm:1 mgcam_siamese_rgbm:1 mscan_rgbm:1
       mgcam_rgb:0 mgcam_hard_rgbm:0 mscan_rgb:0
       mgcam_rgbm:2 mgcam_siamese_rgbm:2 mscan_rgbm:2"

train() {  # row seed suffix [extra flags...]: $RUNS/<row>_s<seed><suffix>
  local row=$1 seed=$2 suffix=$3 init=()
  [ "$row" = mgcam_siamese_rgbm ] && init=(--init_from="$RUNS/mgcam_rgbm_s$seed$suffix")
  echo "=== train ${row}_s$seed$suffix ${*:4} $(date +%T)"
  "$PY" tools/train.py --flagfile="flags/cuhk03_pair1_$row.flags" --progress=false \
    --seed="$seed" --model_dir="$RUNS/${row}_s$seed$suffix" "${init[@]}" "${@:4}"
}

recorded() { [ -f "$RECORDS/$1/config.json" ]; }
# Each (row seed suffix [flags]) of the queue, in order. The check runs (docs/RESULTS.md,
# tools/results_table.py CHECKS) follow: suffix _float32, MGCAM RGB-M seed 0 and its
# Siamese stage 2 at full length in float32, against the same seed in the precision
# `auto` picks; suffix _repeat, MGCAM RGB-M seed 0 once more in that precision (CPU
# training is not bitwise reproducible: the same seed's second run is the yardstick).
queue() {
  for item in $QUEUE; do echo "${item%%:*} ${item##*:} ''"; done
  echo "mgcam_rgbm 0 _float32 --mixed_precision=float32"
  echo "mgcam_siamese_rgbm 0 _float32 --mixed_precision=float32"
  echo "mgcam_rgbm 0 _repeat"
}
has_stage2() { [ "$1" = mgcam_rgbm ] && [ "$2" != _repeat ]; }  # row suffix
if [ "$PHASE" != evaluate ]; then
  while read -r row seed suffix extra; do
    [ "$suffix" = "''" ] && suffix=
    # A run with a committed record is not trained again (its folder may be on a machine
    # since replaced), except a stage-1 MGCAM RGB-M run whose Siamese stage 2 still needs
    # its weights.
    if recorded "${row}_s$seed$suffix" && { ! has_stage2 "$row" "$suffix" ||
        recorded "mgcam_siamese_rgbm_s$seed$suffix"; }; then
      echo "=== ${row}_s$seed$suffix: recorded in $RECORDS, not trained again"
      continue
    fi
    # shellcheck disable=SC2086  # extra holds whole flags, split on purpose
    train "$row" "$seed" "$suffix" $extra </dev/null
  done < <(queue)
fi
[ "$PHASE" = train ] && { echo "=== trained $(date +%T)"; exit 0; }

finished() {  # run folder: its last checkpoint is at the total_steps it was started with
  "$PY" - "$1" <<'PY'
import json, pathlib, re, sys
d = pathlib.Path(sys.argv[1])
from mgcam_tf.training.config import run_settings
total = run_settings(json.loads((d / "config.json").read_text()))["total_steps"]
state = (d / "checkpoints" / "checkpoint").read_text() if (d / "checkpoints" / "checkpoint").is_file() else ""
steps = re.findall(r'model_checkpoint_path: "ckpt-(\d+)"', state)
sys.exit(0 if steps and int(steps[0]) >= total else 1)
PY
}

METRICS="euclidean xqda kissme rerank xqda+rerank"
evaluate() {  # run folder: features once (XQDA and KISSME need the training split's),
  local dir=$1  # then every metric under both protocols, with per-query scores
  [ -f "$dir/features.npz" ] || "$PY" tools/evaluate.py --model_dir="$dir" --data_dir=$DATA \
      --layout=market1501 --metric=xqda --progress=false --save_features="$dir/features.npz"
  for metric in $METRICS; do
    for protocol in single_query all_queries; do
      [ -f "$dir/eval_${metric}_$protocol.json" ] && continue
      "$PY" tools/evaluate.py --features="$dir/features.npz" --metric="$metric" --ap=official \
        --protocol="$protocol" --per_query --progress=false \
        --json_out="$dir/eval_${metric}_$protocol.json"
    done
  done
}
for dir in "$RUNS"/*_s[0-9]*; do
  if [ -d "$dir/checkpoints" ] && finished "$dir"; then
    echo "=== evaluate $dir $(date +%T)"; evaluate "$dir"
    "$PY" tools/run_record.py "$dir" "$RECORDS"
  else
    echo "=== $dir: not finished, not evaluated (rerun the script to resume it)"
  fi
done
echo "=== table $(date +%T)"
"$PY" tools/results_table.py --runs_dir="$RECORDS" --weights_dir="$RUNS" --out_dir=docs \
  --data_dir=$DATA --results_md=docs/RESULTS.md
# The preset: the best MGCAM-Siamese RGB-M by Euclidean all-queries mAP, among this
# machine's runs and the shipped preset (made from a run of an earlier machine, perhaps):
# it is replaced only by a better run.
best=$("$PY" - "$RUNS" <<'PY'
import glob, json, os, sys
runs = glob.glob(f"{sys.argv[1]}/mgcam_siamese_rgbm_s[0-9]*/eval_euclidean_all_queries.json")
shipped = "mgcam_tf/presets/mgcam_siamese_cuhk03/preset.json"
bar = (json.load(open(shipped))["evaluation"]["euclidean/all_queries"]["mAP"]
       if os.path.isfile(shipped) else -1.0)
best = max(runs, key=lambda p: json.load(open(p))["mAP"]) if runs else ""
if best and round(json.load(open(best))["mAP"], 4) > bar:
    print(best.rsplit("/", 1)[0])
else:
    print(f"=== preset kept (Euclidean all-queries mAP {bar}): no better Siamese run here",
          file=sys.stderr)
PY
)
if [ -n "$best" ]; then
  echo "=== preset from $best $(date +%T)"
  "$PY" tools/make_preset.py --model_dir="$best" --name=mgcam_siamese_cuhk03 --data_dir=$DATA \
    --command="tools/reproduce.sh: flags/cuhk03_pair1_mgcam_rgbm.flags then flags/cuhk03_pair1_mgcam_siamese_rgbm.flags, seed ${best##*_s}"
fi
echo "=== done $(date +%T)"
