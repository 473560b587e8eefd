"""mgcam-eval: single-query CMC and mAP with the official protocols (docs/EVALUATION.md).

  mgcam-eval --model_dir=runs/market1501_stage2 --data_dir=/data/Market-1501
  mgcam-eval --saved_model=export/mgcam/1 --data_dir=/data/MARS --metric=xqda+rerank
  mgcam-eval --features=features.npz --metric=euclidean --ap=step --json_out=result.json

Features come from a trained model directory, an exported SavedModel, or an
.npz file with query_features, query_pids, query_camids, gallery_features,
gallery_pids, gallery_camids (and train_features, train_pids for XQDA/KISSME,
train_camids for their --pairs=cross_camera; query_paths, gallery_paths for
--ranked_png; mgcam_tf/evaluation/feature_file.py). --save_features writes such a
file from a model run, so that other metrics can be tried without the network;
it records the model's fingerprint (key model_fingerprint). --features with
--saved_model, --model_dir or --preset evaluates the file only if it holds
that model's features (refused, naming both fingerprints, otherwise):

  mgcam-eval --features=features.npz --saved_model=export/mgcam --metric=euclidean

The published pipelines' conventions (training pairs, XQDA.m's form,
normalisation, re-ranking's rounding, queries without a match, CUHK03's
classic protocol) are flags; docs/EVALUATION.md says which reproduce which code:

  mgcam-eval --features=features.npz --metric=xqda --pairs=cross_camera --xqda_form=official

Cross-domain: a target set may be test-only (query/ and bounding_box_test/,
no training folder); XQDA/KISSME then learn on --train_data_dir's training
split. Several targets in one run give one table (a row per set):

  mgcam-eval --model_dir=runs/market1501_stage2 --data_dir=/data/DukeMTMC-reID,/data/cuhk03_test \
      --metric=kissme+rerank --train_data_dir=/data/Market-1501
"""

from __future__ import annotations

import os
import time

from absl import app, flags

from mgcam_tf import atomic_files
from mgcam_tf.cli.common import (ProgressBar, check_numbers, define_preset_flag,
                                 model_dir_or_preset, run_tool)
from mgcam_tf.data import layouts
from mgcam_tf.evaluation import distances, evaluator, metrics, rerank

FLAGS = flags.FLAGS

# -- where the features come from ------------------------------------------------
flags.DEFINE_string("features", "", "An .npz of precomputed features (keys in the module doc).")
flags.DEFINE_string("model_dir", "", "A training run's model directory (latest checkpoint).")
flags.DEFINE_string("saved_model", "", "An exported SavedModel (its serving_default signature).")
define_preset_flag("--model_dir")
flags.DEFINE_multi_string("data_dir", [], "Target data set folder(s), with --model_dir or "
                          "--saved_model: repeated or comma-separated for several targets "
                          "(one table). A test-only set (query/ and bounding_box_test/) works.")
flags.DEFINE_string("train_data_dir", "", "Data set whose training split XQDA/KISSME learn on "
                    "(default: each target's own; required for a test-only target).")
flags.DEFINE_enum("layout", "auto", list(layouts.layout_names()), "Layout of --data_dir.")
flags.DEFINE_enum("missing_masks", "error", ["error", "generate", "full_body", "skip"],
                  "What to do with images that have no mask.")
flags.DEFINE_integer("batch_size", 256, "Images per forward pass.")
flags.DEFINE_bool("flip_average", False, "Average the features of each image and its mirror "
                  "(off in the paper).")
flags.DEFINE_enum("retrieval_feature", "", ["", "h", "bnneck"],
                  "--model_dir/--preset: the test-time feature in place of the model's own "
                  "(a BNNeck model's h or its normalised copy); empty: the model's.")
flags.DEFINE_string("save_features", "", "Write the extracted features to this .npz.")
# -- distance and protocol ------------------------------------------------------------
flags.DEFINE_string("metric", "xqda+rerank",
                    "Distance on h_full: " + ", ".join(distances.METRICS) + ". xqda/kissme are "
                    "learned on the training features; 'rerank' is Euclidean + k-reciprocal "
                    "re-ranking; the paper's default is xqda+rerank.")
flags.DEFINE_integer("k1", 20, "Re-ranking k1.")
flags.DEFINE_integer("k2", 6, "Re-ranking k2.")
flags.DEFINE_float("lambda_value", 0.3, "Re-ranking lambda (weight of the original distance).")
flags.DEFINE_string("ap", "official",
                    "official: Market-1501 MATLAB scorer (trapezoid between recall steps); "
                    "step: non-interpolated AP of most Python toolkits.")
flags.DEFINE_enum("protocol", "single_query", list(evaluator.PROTOCOLS),
                  "single_query: the data set's query/gallery split; all_queries: every "
                  "test image (query and gallery) in turn the query against the other "
                  "cameras' images (975 queries on CUHK03 pair 1 instead of 200); "
                  "cuhk03_classic: CMC averaged over --trials galleries of one random image "
                  "per identity (torchreid's eval_cuhk03).")
# -- the published pipelines' conventions (docs/EVALUATION.md) -------------------------
flags.DEFINE_enum("pairs", "all", list(distances.PAIR_RULES),
                  "Training pairs of xqda/kissme. all: every pair of training images; "
                  "cross_camera: pairs of two cameras (uses train_camids), as Liao's "
                  "LOMO+XQDA demo and the KISSME toolbox; KISSME then samples as many "
                  "dissimilar pairs as similar ones (--seed).")
flags.DEFINE_enum("xqda_form", "paper", list(distances.XQDA_FORMS),
                  "paper: XQDA's generalised eigenproblem (Liao et al., CVPR 2015); "
                  "official: Liao's XQDA.m (QR, SVD of inv(Sigma_I) Sigma_E, M unclipped).")
flags.DEFINE_bool("normalize", False, "L2-normalise every feature (train too) before the "
                  "metric, as Zhong et al.'s evaluation scripts do.")
flags.DEFINE_enum("rerank_rounding", "python", list(rerank.HALF_ROUNDINGS),
                  "Re-ranking's k1/2: python = int(np.around(k1/2)) (re_ranking.py, half to "
                  "even); matlab = round(k1/2) (half away from zero); floor = fix(k1/2).")
flags.DEFINE_enum("no_match", "exclude", list(metrics.NO_MATCH_RULES),
                  "Queries without a valid gallery match. exclude: left out (Python "
                  "toolkits); count: a miss with AP 0 (Market-1501's evaluation.m).")
flags.DEFINE_integer("trials", 10, "Galleries drawn per query by --protocol=cuhk03_classic "
                     "(torchreid: 10).")
flags.DEFINE_integer("seed", 0, "Seed of KISSME's sampled pairs and of cuhk03_classic's draws.")
# -- outputs ---------------------------------------------------------------------------
flags.DEFINE_string("json_out", "", "Write rank1/5/10/20 and mAP (fractions) and the settings here.")
flags.DEFINE_string("cmc_png", "", "Write the CMC curve (ranks 1-50) to this PNG.")
flags.DEFINE_string("ranked_png", "", "Write the ranked lists of --ranked_queries queries "
                    "(top 10, green = match, red = miss) to this PNG.")
flags.DEFINE_integer("ranked_queries", 8, "Queries shown in --ranked_png.")
flags.DEFINE_bool("ranked_attention", False, "--ranked_png shows beside each image Phi+ "
                  "(MGCAM's contrastive attention map) over it and the mask it was given "
                  "(needs the model: --model_dir, --preset or --saved_model, and --data_dir).")
flags.DEFINE_bool("per_query", False, "Add each query's AP, first-match position and INP to "
                  "--json_out (for paired bootstrap intervals, tools/bootstrap.py).")
flags.DEFINE_bool("progress", True, "Progress lines on stderr.")
check_numbers("batch_size", "k1", "k2", "ranked_queries", "trials", low=1)
check_numbers("lambda_value", low=0, high=1)


def load_npz(path: str, need_train: bool, need_paths: bool) -> dict:
    """The arrays of a features .npz, checked; ConfigError names a missing key."""
    from mgcam_tf.evaluation import feature_file

    return feature_file.read(
        path, label=f"--features={path}", need_paths=need_paths,
        camids_needed_by=("--pairs=cross_camera (the training images' cameras); write the "
                          "file again with --save_features, or use --pairs=all")
        if FLAGS.pairs == "cross_camera" else "",
        train_needed_by=(f"--metric={FLAGS.metric} (learned on training features); add it "
                         "or use --metric=euclidean") if need_train else "")


def target_dirs() -> list[str]:
    """--data_dir's folders: repeated flags and comma-separated lists alike."""
    return [d.strip() for value in FLAGS.data_dir for d in value.split(",") if d.strip()]


FINGERPRINT_KEY = "model_fingerprint"   # feature_file.FINGERPRINT_KEY, without its imports


def _source_fingerprint() -> tuple[str, str]:
    """(flag, fingerprint) of the model flag given: the export's fingerprint
    (`SavedModelEmbedder.fingerprint`, as in extraction.json) or the model
    directory's (`run_dir.model_fingerprint`), without loading the model."""
    if FLAGS.model_dir or FLAGS.preset:
        from mgcam_tf.training import run_dir

        flag = f"--model_dir={FLAGS.model_dir}" if FLAGS.model_dir else f"--preset={FLAGS.preset}"
        return flag, run_dir.model_fingerprint(model_dir_or_preset())
    import types

    from mgcam_tf.serving import export
    from mgcam_tf.serving.loader import SavedModelEmbedder

    export_dir = export.resolve_export(FLAGS.saved_model)
    return (f"--saved_model={FLAGS.saved_model} ({export_dir})",
            SavedModelEmbedder.fingerprint.fget(types.SimpleNamespace(export_dir=export_dir)))


def check_fingerprint(data: dict) -> None:
    """--features with a model flag: the file must hold that model's features."""
    from mgcam_tf.errors import ConfigError

    flag, want = _source_fingerprint()
    stored = data.get(FINGERPRINT_KEY)
    if stored is None:
        raise ConfigError(f"--features={FLAGS.features} records no {FINGERPRINT_KEY}, so it "
                          f"cannot be checked against {flag} (model {want}); drop {flag.split('=')[0]} "
                          "or write the file again with --save_features")
    if str(stored) != want:
        raise ConfigError(f"--features={FLAGS.features} holds features of model {stored}, but "
                          f"{flag} is model {want}; extract them again with this model")


def _load_model():
    if FLAGS.model_dir or FLAGS.preset:
        from mgcam_tf.training import run_dir
        return run_dir.load_trained_model(model_dir_or_preset(),
                                          retrieval_feature=FLAGS.retrieval_feature or None)
    if FLAGS.retrieval_feature:
        from mgcam_tf.errors import ConfigError
        raise ConfigError("--retrieval_feature applies to --model_dir and --preset: an export "
                          "serves the feature it was exported with")
    from mgcam_tf.serving.loader import SavedModelEmbedder
    return SavedModelEmbedder(FLAGS.saved_model)


def _split_arrays(model, name: str, split, label: str = "") -> dict:
    """The features file's keys of one split (train_camids included for train)."""
    from mgcam_tf.evaluation import feature_file
    from mgcam_tf.evaluation import features as feat_lib

    out = feat_lib.split_features(model, split, batch_size=FLAGS.batch_size,
                                  flip_average=FLAGS.flip_average,
                                  progress=ProgressBar(f"{label}{name} features",
                                                       enabled=FLAGS.progress))
    return feature_file.arrays_of(name, out)


def _model_features(model, data_dir: str, need_train: bool, train_data: dict | None,
                    label: str = "") -> dict:
    """Features of query, gallery (and train) of one target set.

    train_data: the training features of --train_data_dir, extracted once for
    every target; None: the target's own training split.
    """
    dataset = layouts.load_dataset(data_dir, layout=FLAGS.layout,
                                   missing_masks=FLAGS.missing_masks)
    data = {}
    for name in ("query", "gallery"):
        data.update(_split_arrays(model, name, getattr(dataset, name), label))
    if need_train:
        if train_data is None:
            train = dataset.require_train(f"--metric={FLAGS.metric} (or give --train_data_dir)")
            train_data = _split_arrays(model, "train", train, label)
        data.update(train_data)
    data["dataset"] = dataset.name
    return data


def _train_features(model) -> dict | None:
    """--train_data_dir's training features, or None when it is not given."""
    if not FLAGS.train_data_dir:
        return None
    dataset = layouts.load_dataset(FLAGS.train_data_dir, layout="auto",
                                   missing_masks=FLAGS.missing_masks)
    return _split_arrays(model, "train", dataset.require_train(
        f"--train_data_dir={FLAGS.train_data_dir}"), "source ")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    import numpy as np

    from mgcam_tf.errors import ConfigError
    from mgcam_tf.evaluation import feature_file, reports

    sources = [s for s in ("features", "model_dir", "saved_model", "preset") if getattr(FLAGS, s)]
    models_given = [s for s in sources if s != "features"]
    if len(models_given) > 1 or not sources:
        raise ConfigError("give exactly one of --features, --model_dir, --saved_model, --preset "
                          "(or --features with one of the others, to check the file is that "
                          f"model's) (got {', '.join('--' + s for s in sources) or 'none'})")
    base, use_rerank = distances.parse_metric(FLAGS.metric)   # ConfigError names the choices
    if FLAGS.ap not in metrics.AP_MODES:
        raise ConfigError(f"--ap must be one of {', '.join(metrics.AP_MODES)}; got {FLAGS.ap!r}")
    need_train = base in distances.LEARNED
    # Check where outputs go before the (possibly long) feature extraction.
    for flag in ("json_out", "cmc_png", "ranked_png", "save_features"):
        path = getattr(FLAGS, flag)
        folder = os.path.dirname(os.path.abspath(path)) if path else ""
        if path and not os.path.isdir(folder):
            raise ConfigError(f"--{flag}={path}: folder {folder} does not exist")
    if FLAGS.save_features and FLAGS.features:
        raise ConfigError("--save_features writes the features of --model_dir or --saved_model; "
                          "with --features they are already in a file")
    if FLAGS.ranked_queries < 1:
        raise ConfigError(f"--ranked_queries must be >= 1, got {FLAGS.ranked_queries}")
    targets = target_dirs()
    if not FLAGS.features and not targets:
        raise ConfigError("--data_dir is required with --model_dir or --saved_model")
    if len(targets) > 1:
        for flag in ("save_features", "ranked_png"):
            if getattr(FLAGS, flag):
                raise ConfigError(f"--{flag} takes one target; got {len(targets)} --data_dir sets")
    if FLAGS.ranked_png and FLAGS.protocol != "single_query":
        raise ConfigError("--ranked_png shows the single_query protocol's lists; "
                          "drop it or use --protocol=single_query")
    judge = evaluator.ReidEvaluator(
        FLAGS.metric, FLAGS.ap, FLAGS.protocol, k1=FLAGS.k1, k2=FLAGS.k2,
        lambda_value=FLAGS.lambda_value, pairs=FLAGS.pairs, xqda_form=FLAGS.xqda_form,
        normalize=FLAGS.normalize, half_rounding=FLAGS.rerank_rounding,
        no_match=FLAGS.no_match, seed=FLAGS.seed, trials=FLAGS.trials)
    settings = {"metric": FLAGS.metric, "ap": FLAGS.ap, "protocol": FLAGS.protocol}
    if use_rerank:
        settings.update(k1=FLAGS.k1, k2=FLAGS.k2, lambda_value=FLAGS.lambda_value)
    settings.update(_convention_settings(need_train, use_rerank))
    if not FLAGS.features:
        settings["flip_average"] = FLAGS.flip_average
    if need_train and FLAGS.train_data_dir:
        settings["train_data_dir"] = FLAGS.train_data_dir

    if FLAGS.features:
        data = load_npz(FLAGS.features, need_train, bool(FLAGS.ranked_png))
        source = {"features": FLAGS.features}
        if models_given:
            check_fingerprint(data)
        if FINGERPRINT_KEY in data:
            source[FINGERPRINT_KEY] = str(data[FINGERPRINT_KEY])
        runs = [(None, data, source)]
    else:
        fingerprint = _source_fingerprint()[1]
        model = _load_model()
        train_data = _train_features(model) if need_train else None
        runs = []
        for target in targets:
            label = f"{_target_name(target)}: " if len(targets) > 1 else ""
            data = _model_features(model, target, need_train, train_data, label)
            source = {sources[0]: getattr(FLAGS, sources[0]), "data_dir": target,
                      "dataset": data.pop("dataset"), FINGERPRINT_KEY: fingerprint}
            data[FINGERPRINT_KEY] = np.array(fingerprint)
            runs.append((target, data, source))
        if FLAGS.save_features:
            feature_file.write(FLAGS.save_features, runs[0][1])

    rows, payloads, curves = [], {}, {}
    for target, data, source in runs:
        query, gallery, train = feature_file.splits(data)
        t0 = time.perf_counter()
        result = judge.evaluate(query, gallery, train, progress=ProgressBar(
            "re-ranking", enabled=FLAGS.progress and use_rerank)).result
        t_dist = time.perf_counter() - t0
        summary = result.summary()
        payload = dict(summary)
        payload.update(num_query=result.num_query, num_valid=result.num_valid,
                       num_invalid=result.num_invalid,
                       num_gallery=int(np.asarray(data["gallery_pids"]).shape[0]),
                       distance_seconds=round(t_dist, 3), settings={**settings, **source})
        if FLAGS.per_query:
            payload["per_query"] = {"ap": [None if np.isnan(a) else float(a) for a in result.ap],
                                    "first_match": result.first_match.tolist(),
                                    "inp": [None if np.isnan(a) else float(a)
                                            for a in result.inp]}
        name = _target_name(target) if target else "features"
        rows.append((name, summary, result))
        payloads[name] = payload
        curves[name if len(runs) > 1 else FLAGS.metric] = result.cmc
    if len(rows) == 1:
        _, summary, result = rows[0]
        print(reports.format_table(summary, settings, result.num_valid, result.num_invalid,
                                   no_match=result.no_match))
    else:
        print(reports.format_targets_table([(n, s, r.num_valid) for n, s, r in rows], settings))
    if FLAGS.json_out:
        atomic_files.write_json(FLAGS.json_out, next(iter(payloads.values())) if len(runs) == 1
                                else {"settings": settings, "targets": payloads})
    if FLAGS.cmc_png:
        reports.write_cmc_curve(FLAGS.cmc_png, curves)
    if FLAGS.ranked_png:
        data = runs[0][1]
        if "query_paths" not in data:
            raise ConfigError("--ranked_png needs query_paths and gallery_paths")
        query, gallery, train = feature_file.splits(data)
        dist = judge.distances(query, gallery, train)
        reports.write_ranked_list(
            FLAGS.ranked_png, dist, feature_file.paths(data, "query_paths"),
            feature_file.paths(data, "gallery_paths"),
            data["query_pids"], data["query_camids"],
            data["gallery_pids"], data["gallery_camids"], num_queries=FLAGS.ranked_queries,
            tile_panels=_attention_panels(runs[0][0]) if FLAGS.ranked_attention else None)


def _attention_panels(data_dir: str | None):
    """(path, tile) -> [the tile, Phi+ over it, its mask over it], each image's Phi+
    computed when the ranked list draws it (a few dozen images, not the gallery)."""
    from mgcam_tf.data import layouts
    from mgcam_tf.errors import ConfigError
    from mgcam_tf.retrieval import attention_maps

    if not data_dir or not (FLAGS.model_dir or FLAGS.preset or FLAGS.saved_model):
        raise ConfigError("--ranked_attention needs the model (--model_dir, --preset or "
                          "--saved_model) and its --data_dir")
    dataset = layouts.load_dataset(data_dir, layout=FLAGS.layout,
                                   missing_masks=FLAGS.missing_masks)
    masks = {p: m for split in (dataset.query, dataset.gallery)
             for p, m in zip(split.image_paths, split.mask_paths)}
    model = _load_model()

    def panels(path, tile):
        phi, mask = attention_maps.attention_for_files(model, [path], [masks.get(path)])
        return attention_maps.attention_tiles(tile, phi[0], mask[0])

    return panels


def _target_name(data_dir: str) -> str:
    return os.path.basename(os.path.normpath(data_dir)) or data_dir


def _convention_settings(need_train: bool, use_rerank: bool) -> dict:
    """The published-pipeline settings that differ from the defaults (records of
    default runs stay as they were)."""
    chosen = {}
    if need_train and FLAGS.pairs != "all":
        chosen["pairs"] = FLAGS.pairs
    if need_train and FLAGS.xqda_form != "paper" and FLAGS.metric.startswith("xqda"):
        chosen["xqda_form"] = FLAGS.xqda_form
    if FLAGS.normalize:
        chosen["normalize"] = True
    if use_rerank and FLAGS.rerank_rounding != "python":
        chosen["rerank_rounding"] = FLAGS.rerank_rounding
    if FLAGS.no_match != "exclude":
        chosen["no_match"] = FLAGS.no_match
    if FLAGS.protocol == "cuhk03_classic":
        chosen["trials"] = FLAGS.trials
    if FLAGS.protocol == "cuhk03_classic" or (need_train and FLAGS.pairs == "cross_camera"
                                              and FLAGS.metric.startswith("kissme")):
        chosen["seed"] = FLAGS.seed
    return chosen


def run():
    """Console-script entry point of mgcam-eval."""
    run_tool(main, __name__)


if __name__ == "__main__":
    run()
