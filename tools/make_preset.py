"""Turns a trained model directory into a preset shipped in mgcam_tf/presets/<name>/.

  python tools/make_preset.py --model_dir=RUNS/mgcam_siamese_rgbm_s0 \\
      --name=mgcam_siamese_cuhk03 --data_dir=../shared/data/cuhk03_pair1 \\
      --command="tools/reproduce.sh (row mgcam_siamese_rgbm, seed 0)"

Writes config.json (the run's), checkpoints/ with the weights alone (no
optimizer state: a few MB), and preset.json with the evaluation figures
measured here on --data_dir (Euclidean and XQDA + re-ranking, both protocols),
the training command and the data's terms of use. Rerunning replaces the
preset atomically (written beside it, then renamed).
"""

import argparse
import datetime
import json
import pathlib
import shutil
import subprocess
import sys
import tempfile

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CUHK03_TERMS = ("Trained on CUHK03 (camera pair 1, detected boxes, 643 identities) for "
                "research and testing use only: the data set's terms ask users to respect "
                "the privacy of the people pictured. Masks: BlazePose-full segmentation.")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_dir", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--data_dir", required=True, help="evaluated on its query/gallery")
    parser.add_argument("--command", required=True, help="the command that trained it")
    parser.add_argument("--description", default="MGCAM-Siamese, RGB-M input")
    parser.add_argument("--terms", default=CUHK03_TERMS)
    parser.add_argument("--recipe", default="",
                        help="the training recipe in words, with the experiments or "
                             "flagfiles that hold it (shown to users beside the figures)")
    parser.add_argument("--note", default="",
                        help="what a user must know about the figures (e.g. that they are "
                             "in-sample because the preset trained on --data_dir's test ids)")
    args = parser.parse_args(argv)

    import numpy as np

    from mgcam_tf import presets
    from mgcam_tf.data import layouts
    from mgcam_tf.evaluation import evaluator, features
    from mgcam_tf.training import run_dir

    model = run_dir.load_trained_model(args.model_dir)
    dataset = layouts.load_dataset(args.data_dir)
    split = {name: features.split_features(model, getattr(dataset, name), batch_size=128)
             for name in ("query", "gallery", "train")}
    figures = {}
    for metric in ("euclidean", "xqda+rerank"):
        for protocol in evaluator.PROTOCOLS:
            result = evaluator.ReidEvaluator(metric, "official", protocol).evaluate(
                split["query"], split["gallery"], split["train"]).result
            figures[f"{metric}/{protocol}"] = {
                "rank1": round(result.rank(1), 4), "mAP": round(float(result.mAP), 4),
                "num_query": int(result.num_query)}
            print(f"{metric:12s} {protocol:13s} rank-1 {100 * result.rank(1):.2f} "
                  f"mAP {100 * result.mAP:.2f} ({result.num_query} queries)")
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip()
    info = {"name": args.name, "description": args.description,
            "model": run_dir.read_model_config(args.model_dir),
            "trained_with": args.command, "source_run": str(args.model_dir),
            "terms": args.terms, "evaluated_on": str(args.data_dir),
            "evaluation_ap": "official", "evaluation": figures,
            "made": datetime.date.today().isoformat(), "commit": commit,
            "feature_dim": int(np.asarray(split["query"].features).shape[1])}
    if args.recipe:
        info["recipe"] = args.recipe
    if args.note:
        info["note"] = args.note
    target = REPO / "mgcam_tf" / "presets" / args.name
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{args.name}.") as tmp:
        tmp = pathlib.Path(tmp) / args.name
        tmp.mkdir()
        stored = json.loads((pathlib.Path(args.model_dir) / run_dir.CONFIG_FILE).read_text())
        run_dir.prepare_model_dir(tmp, run_dir.read_model_config(args.model_dir),
                                  {"trained_with": args.command, **stored.get("settings", {})},
                                  stored.get("experiment"))
        # Weights only: the network alone in the checkpoint, no optimizer slots.
        run_dir.checkpoint_manager(tmp, model).save(checkpoint_number=1)
        (tmp / presets.PRESET_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
        old = target.with_name(f".{args.name}.old")
        if target.exists():
            target.rename(old)
        tmp.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    print(f"preset {args.name} written to {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
