#!/usr/bin/env bash
# The modern recipe's runs (docs/RESULTS.md, "The modern recipe"): the full recipe for
# MGCAM and MSCAN-body, its ablation steps (mgcam_tf/training/experiments.py,
# RECIPE_STEPS, each on top of the ones before) and the Siamese row's control, trained
# in turn, then evaluated and recorded as tools/reproduce.sh records the paper's rows.
#
#   PYTHON=.venv/bin/python RUNS=/work/runs/recipe tools/reproduce_recipe.sh
#   QUEUE="cuhk03_pair1_recipe_mgcam_rgbm:1" PHASE=train tools/reproduce_recipe.sh
#   PHASE=preset tools/reproduce_recipe.sh     # trains (two stages) and writes the preset mgcam_recipe_cuhk03
#
# Resumable: a training resumes from its last checkpoint (or returns at once when it
# reached its total_steps); an evaluation whose JSON exists is not run again. Runs go to
# $RUNS/<experiment less cuhk03_pair1_>_s<seed>/, their records to $RECORDS/.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
RUNS=${RUNS:-runs/recipe}
RECORDS=${RECORDS:-docs/results/cuhk03_pair1_recipe}
PHASE=${PHASE:-all}
SHARED=../shared/data
# The full recipe first (the answer the ablation is read against), then the Siamese row's
# control (short), then MSCAN-body under the recipe, then the SGD recipe and its Siamese
# stage (two seeds), then the ablation's steps, then second seeds, then the SGD recipe on
# MSCAN-body (three seeds) and its MGCAM run's third seed, then the two options' and
# their Siamese stage's third seeds, then the whole recipe at twice the budget (8,000
# iterations) and its Siamese stage, the paper's recipe at that budget (the control), the
# 8,000-iteration recipe's second seed, then the ablation on the paper's solver at that
# budget (from the two options to the whole recipe, one step at a time), then the whole
# recipe's Siamese third seed at 4,000, then the 8,000-iteration recipe and its Siamese
# stage on the detected and hand-drawn boxes of the training ids (the preset's data).
QUEUE=${QUEUE:-"cuhk03_pair1_recipe_mgcam_rgbm:0 cuhk03_pair1_mgcam_rgbm:0
  cuhk03_pair1_mgcam_siamese_rgbm:0 cuhk03_pair1_mgcam_continued_rgbm:0
  cuhk03_pair1_recipe_mscan_rgbm:0
  cuhk03_pair1_recipe_sgd_whole_mgcam_rgbm:0 cuhk03_pair1_recipe_sgd_mgcam_rgbm:0
  cuhk03_pair1_recipe_sgd_whole_siamese_rgbm:0 cuhk03_pair1_recipe_sgd_whole_mgcam_rgbm:1
  cuhk03_pair1_recipe_sgd_mgcam_rgbm:1
  cuhk03_pair1_recipe_sgd_siamese_rgbm:0 cuhk03_pair1_recipe_sgd_siamese_rgbm:1
  cuhk03_pair1_recipe_1_optimizer:0 cuhk03_pair1_recipe_2_batch_hard:0
  cuhk03_pair1_recipe_3_label_smoothing:0 cuhk03_pair1_recipe_4_erasing:0
  cuhk03_pair1_recipe_5_bnneck:0 cuhk03_pair1_recipe_labeled_mgcam_rgbm:0
  cuhk03_pair1_recipe_mgcam_rgbm:1 cuhk03_pair1_recipe_mscan_rgbm:1
  cuhk03_pair1_recipe_sgd_whole_mscan_rgbm:0 cuhk03_pair1_recipe_sgd_whole_mscan_rgbm:1
  cuhk03_pair1_recipe_sgd_whole_mgcam_rgbm:2 cuhk03_pair1_recipe_sgd_whole_mscan_rgbm:2
  cuhk03_pair1_recipe_sgd_mgcam_rgbm:2 cuhk03_pair1_recipe_sgd_siamese_rgbm:2
  cuhk03_pair1_recipe_sgd_whole_8k_mgcam_rgbm:0 cuhk03_pair1_recipe_sgd_whole_8k_siamese_rgbm:0
  cuhk03_pair1_mgcam_8k_rgbm:0 cuhk03_pair1_recipe_sgd_whole_8k_mgcam_rgbm:1
  cuhk03_pair1_recipe_sgd_1_two_options:0 cuhk03_pair1_recipe_sgd_2_batch_hard:0
  cuhk03_pair1_recipe_sgd_3_pad_crop:0 cuhk03_pair1_recipe_sgd_4_bnneck:0
  cuhk03_pair1_recipe_sgd_whole_siamese_rgbm:2
  cuhk03_pair1_recipe_sgd_whole_8k_labeled_mgcam_rgbm:0
  cuhk03_pair1_recipe_sgd_whole_8k_labeled_siamese_rgbm:0"}

# The Siamese row's control (docs/RESULTS.md): a paper stage-1 run, then from its weights
# the Siamese stage 2 and stage 1 continued without the Siamese loss, for the same 1,000
# iterations each; folders control_<row>_s<seed>, apart from the paper rows' records.
CONTROL="cuhk03_pair1_mgcam_rgbm cuhk03_pair1_mgcam_siamese_rgbm cuhk03_pair1_mgcam_continued_rgbm"
folder() {
  local exp=$1 seed=$2 prefix=
  case " $CONTROL " in *" $exp "*) prefix=control_ ;; esac
  echo "$RUNS/$prefix${exp#cuhk03_pair1_}_s$seed"
}
init_from() {  # a second stage starts from its stage-1 run of the same seed
  case $1 in
    cuhk03_pair1_mgcam_siamese_rgbm|cuhk03_pair1_mgcam_continued_rgbm)
      echo "--init_from=$(folder cuhk03_pair1_mgcam_rgbm "$2")" ;;
    cuhk03_pair1_recipe_sgd_siamese_rgbm)
      echo "--init_from=$(folder cuhk03_pair1_recipe_sgd_mgcam_rgbm "$2")" ;;
    cuhk03_pair1_recipe_sgd_whole_siamese_rgbm)
      echo "--init_from=$(folder cuhk03_pair1_recipe_sgd_whole_mgcam_rgbm "$2")" ;;
    cuhk03_pair1_recipe_sgd_whole_8k_siamese_rgbm)
      echo "--init_from=$(folder cuhk03_pair1_recipe_sgd_whole_8k_mgcam_rgbm "$2")" ;;
    cuhk03_pair1_recipe_sgd_whole_8k_labeled_siamese_rgbm)
      echo "--init_from=$(folder cuhk03_pair1_recipe_sgd_whole_8k_labeled_mgcam_rgbm "$2")" ;;
  esac
}

if [ "$PHASE" = preset ]; then
  # The shipped preset: the recipe on the paper's solver at 8,000 iterations and its
  # Siamese stage, on all 743 people of camera pair 1, detected and hand-drawn boxes
  # (flags/cuhk03_pair1_recipe_preset*.flags), seed 0; then its files and figures (in-sample on
  # cuhk03_pair1; the Market-1501 and MARS minis are other cameras).
  stage1=$RUNS/preset_s0 dir=$RUNS/preset_siamese_s0
  echo "=== train preset $(date +%T)"
  "$PY" tools/train.py --flagfile=flags/cuhk03_pair1_recipe_preset.flags --seed=0 \
    --model_dir="$stage1" --progress=false </dev/null
  "$PY" tools/train.py --flagfile=flags/cuhk03_pair1_recipe_preset_siamese.flags --seed=0 \
    --model_dir="$dir" --init_from="$stage1" --progress=false </dev/null
  "$PY" tools/make_preset.py --model_dir="$dir" --name=mgcam_recipe_cuhk03 \
    --data_dir=$SHARED/cuhk03_pair1 --description="MGCAM-Siamese, RGB-M input, the modern recipe on the paper's solver" \
    --command="PHASE=preset tools/reproduce_recipe.sh (flags/cuhk03_pair1_recipe_preset.flags then flags/cuhk03_pair1_recipe_preset_siamese.flags, seed 0)" \
    --recipe="The paper's SGD solver at twice its budget (0.01, x0.1 at 6,000 of 8,000 iterations; Siamese stage 1,000 at 0.001) with P x K batches (16 x 4) and a batch-hard triplet loss (margin 0.3) on h, label smoothing 0.1, random erasing 0.5 on the image, pad 10 + random crop, BNNeck (retrieval on h), IBN in MSCAN stages 1 and 2: experiments cuhk03_pair1_recipe_preset and cuhk03_pair1_recipe_preset_siamese (docs/RESULTS.md, 'Twice the budget')" \
    --terms="Trained on CUHK03 (camera pair 1, all 743 identities: the 643 training ids and the 100 dev ids, detected and hand-drawn boxes) for research and testing use only: the data set's terms ask users to respect the privacy of the people pictured. Masks: BlazePose-full segmentation." \
    --note="In-sample: the figures below are on cuhk03_pair1's query and gallery, whose people this preset trained on. The same recipe's figures on people it never saw (trained on the 643 training ids only) are in docs/RESULTS.md, 'Twice the budget'."
  mkdir -p "$RECORDS/preset"
  for name in market1501_mini mars_mini; do
    [ -d "$SHARED/$name" ] || continue
    "$PY" tools/evaluate.py --preset=mgcam_recipe_cuhk03 --data_dir="$SHARED/$name" \
      --metric=euclidean --protocol=single_query --per_query --progress=false \
      --json_out="$RECORDS/preset/eval_${name}_euclidean_single_query.json"
  done
  echo "=== preset done $(date +%T)"; exit 0
fi
if [ "$PHASE" != evaluate ]; then
  for item in $QUEUE; do
    exp=${item%%:*}; seed=${item##*:}
    echo "=== train $exp seed $seed $(date +%T)"
    # shellcheck disable=SC2046  # one flag or none
    "$PY" tools/train.py --experiment="$exp" --seed="$seed" --model_dir="$(folder "$exp" "$seed")" \
      --progress=false $(init_from "$exp" "$seed") </dev/null
  done
fi
[ "$PHASE" = train ] && { echo "=== trained $(date +%T)"; exit 0; }

# Each finished run: Euclidean single-query and all-queries on the dev split (per-query
# scores for the paired intervals), the same on the hand-drawn boxes of the same images
# (a small shift), and Market-1501 / MARS minis (other cameras; tiny: a sanity check).
evaluate() {  # model folder [where the JSONs go (default: the model folder)]
  local dir=$1 into=${2:-$1} name data protocol
  mkdir -p "$into"
  for name in cuhk03_pair1 cuhk03_pair1_labeled market1501_mini mars_mini; do
    data=$SHARED/$name
    [ -d "$data" ] || continue
    for protocol in single_query all_queries; do
      [ "$name" != cuhk03_pair1 ] && [ "$protocol" = all_queries ] && continue
      # The dev split's file has the paper rows' name, so the two compare in one table.
      local out="$into/eval_${name}_euclidean_$protocol.json"
      [ "$name" = cuhk03_pair1 ] && out="$into/eval_euclidean_$protocol.json"
      [ -f "$out" ] && continue
      "$PY" tools/evaluate.py --model_dir="$dir" --data_dir="$data" --metric=euclidean \
        --protocol="$protocol" --per_query --progress=false --json_out="$out"
    done
  done
  # A BNNeck run: its other test-time feature too (issue: measure which retrieves better).
  if grep -q '"bnneck": true' "$dir/config.json"; then
    local other=bnneck
    grep -q '"retrieval_feature": "bnneck"' "$dir/config.json" && other=h
    for protocol in single_query all_queries; do
      local out="$into/eval_${other}_feature_euclidean_$protocol.json"
      [ -f "$out" ] && continue
      "$PY" tools/evaluate.py --model_dir="$dir" --data_dir=$SHARED/cuhk03_pair1 \
        --retrieval_feature=$other --metric=euclidean --protocol="$protocol" --per_query \
        --progress=false --json_out="$out"
    done
  fi
}
finished() {  # run folder: its last checkpoint is at the total_steps it was started with
  "$PY" - "$1" <<'PY'
import json, pathlib, re, sys
from mgcam_tf.training.config import run_settings
d = pathlib.Path(sys.argv[1])
total = run_settings(json.loads((d / "config.json").read_text()))["total_steps"]
state = d / "checkpoints" / "checkpoint"
steps = re.findall(r'model_checkpoint_path: "ckpt-(\d+)"', state.read_text()) if state.is_file() else []
sys.exit(0 if steps and int(steps[0]) >= total else 1)
PY
}
# The shipped preset (the paper's recipe), evaluated the same way, for the same tables.
echo "=== evaluate the shipped preset $(date +%T)"
evaluate mgcam_tf/presets/mgcam_siamese_cuhk03 "$RECORDS/shipped_preset_s0"
for item in $QUEUE; do
  exp=${item%%:*}; seed=${item##*:}; dir=$(folder "$exp" "$seed")
  if ! { [ -d "$dir/checkpoints" ] && finished "$dir"; }; then
    echo "=== $dir: not finished, not evaluated (rerun the script to resume it)"; continue
  fi
  echo "=== evaluate $dir $(date +%T)"; evaluate "$dir"
  "$PY" tools/run_record.py "$dir" "$RECORDS"
done
echo "=== done $(date +%T)"
