"""mgcam-eval: single-query CMC and mAP with the official protocols (SPEC §5).

  mgcam-eval --model_dir=runs/market1501_stage2 --data_dir=/data/Market-1501
  mgcam-eval --saved_model=export/mgcam/1 --data_dir=/data/MARS --metric=xqda+rerank
  mgcam-eval --features=features.npz --metric=euclidean --ap=step --json_out=result.json

Features come from a trained model directory, an exported SavedModel, or an
.npz file with query_features, query_pids, query_camids, gallery_features,
gallery_pids, gallery_camids (and train_features, train_pids for XQDA/KISSME;
query_paths, gallery_paths for --ranked_png). --save_features writes such a
file from a model run, so that other metrics can be tried without the network.
"""

from __future__ import annotations

import io
import os
import time

from absl import app, flags

from mgcam_tf.cli.common import ProgressBar, one_line_errors

FLAGS = flags.FLAGS

METRIC_CHOICES = ["euclidean", "cosine", "xqda", "kissme", "rerank", "euclidean+rerank",
                  "cosine+rerank", "xqda+rerank", "kissme+rerank"]
NPZ_REQUIRED = ("query_features", "query_pids", "query_camids",
                "gallery_features", "gallery_pids", "gallery_camids")

# -- where the features come from ------------------------------------------------
flags.DEFINE_string("features", "", "An .npz of precomputed features (keys in the module doc).")
flags.DEFINE_string("model_dir", "", "A training run's model directory (latest checkpoint).")
flags.DEFINE_string("saved_model", "", "An exported SavedModel (its serving_default signature).")
flags.DEFINE_string("data_dir", "", "Data set folder, with --model_dir or --saved_model.")
flags.DEFINE_enum("layout", "auto", ["auto", "market1501", "dukemtmc", "cuhk03",
                                     "cuhk03_labeled", "cuhk03_detected", "mars",
                                     "folders", "manifest"], "Layout of --data_dir.")
flags.DEFINE_enum("missing_masks", "error", ["error", "generate", "full_body", "skip"],
                  "What to do with images that have no mask.")
flags.DEFINE_integer("batch_size", 256, "Images per forward pass.")
flags.DEFINE_bool("flip_average", False, "Average the features of each image and its mirror "
                  "(off in the paper).")
flags.DEFINE_string("save_features", "", "Write the extracted features to this .npz.")
# -- distance and protocol ------------------------------------------------------------
flags.DEFINE_string("metric", "xqda+rerank",
                    "Distance on h_full: " + ", ".join(METRIC_CHOICES) + ". xqda/kissme are "
                    "learned on the training features; 'rerank' is Euclidean + k-reciprocal "
                    "re-ranking; the paper's default is xqda+rerank.")
flags.DEFINE_integer("k1", 20, "Re-ranking k1.")
flags.DEFINE_integer("k2", 6, "Re-ranking k2.")
flags.DEFINE_float("lambda_value", 0.3, "Re-ranking lambda (weight of the original distance).")
flags.DEFINE_string("ap", "official",
                    "official: Market-1501 MATLAB scorer (trapezoid between recall steps); "
                    "step: non-interpolated AP of most Python toolkits.")
# -- outputs ---------------------------------------------------------------------------
flags.DEFINE_string("json_out", "", "Write rank1/5/10/20 and mAP (fractions) and the settings here.")
flags.DEFINE_string("cmc_png", "", "Write the CMC curve (ranks 1-50) to this PNG.")
flags.DEFINE_string("ranked_png", "", "Write the ranked lists of --ranked_queries queries "
                    "(top 10, green = match, red = miss) to this PNG.")
flags.DEFINE_integer("ranked_queries", 8, "Queries shown in --ranked_png.")
flags.DEFINE_bool("progress", True, "Progress lines on stderr.")


def load_npz(path: str, need_train: bool, need_paths: bool) -> dict:
    """The arrays of a features .npz, checked; ConfigError names a missing key."""
    import numpy as np

    from mgcam_tf.errors import ConfigError, DataError

    if not os.path.isfile(path):
        raise ConfigError(f"--features={path}: file not found")
    try:
        with np.load(path, allow_pickle=False) as npz:
            data = {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as err:
        raise DataError(f"--features={path}: not a readable .npz ({err})") from None
    for key in NPZ_REQUIRED:
        if key not in data:
            raise ConfigError(f"--features={path}: missing key {key!r}")
    if need_train:
        for key in ("train_features", "train_pids"):
            if key not in data:
                raise ConfigError(f"--features={path}: missing key {key!r}, needed by "
                                  f"--metric={FLAGS.metric} (learned on training features); "
                                  "add it or use --metric=euclidean")
    if need_paths:
        for key in ("query_paths", "gallery_paths"):
            if key not in data:
                raise ConfigError(f"--features={path}: missing key {key!r}, needed by --ranked_png")
    return data


class _SavedModelFeatures:
    """Feeds rgbm batches to an exported SavedModel and returns its feature output.

    `mgcam_tf.export` writes a `serving_rgbm` signature (input `rgbm` float32
    [N, 160, 64, 4], output `embedding`) beside `serving_default` (uint8 image
    and mask): the evaluation pipeline already yields preprocessed rgbm, so
    any signature with such an input is used, `serving_rgbm` first.
    """

    def __init__(self, path: str):
        import tensorflow as tf

        from mgcam_tf.errors import ConfigError

        path = self._resolve(path)
        try:
            self.loaded = tf.saved_model.load(path)
        except (OSError, ValueError, tf.errors.OpError) as err:
            raise ConfigError(f"--saved_model={path}: cannot load ({str(err).splitlines()[0]})") \
                from None
        names = sorted(self.loaded.signatures, key=lambda n: (n != "serving_rgbm", n))
        found = []
        self.fn = self.input_name = None
        for name in names:
            fn = self.loaded.signatures[name]
            _, inputs = fn.structured_input_signature
            for arg, spec in inputs.items():
                found.append(f"{name}({arg} {spec.dtype.name} {spec.shape})")
            if len(inputs) == 1:
                (arg, spec), = inputs.items()
                if spec.dtype == tf.float32 and spec.shape.as_list()[1:] == [160, 64, 4]:
                    self.fn, self.input_name = fn, arg
                    break
        if self.fn is None:
            raise ConfigError(
                f"--saved_model={path}: no signature takes the preprocessed rgbm batch "
                f"float32 [N, 160, 64, 4] (found {', '.join(found) or 'no signature'}); "
                "export with mgcam_tf.export, or evaluate the --model_dir")

    @staticmethod
    def _resolve(path: str) -> str:
        """An export base (folders 1, 2, ...) means its newest version."""
        from mgcam_tf.errors import ConfigError

        if not os.path.isdir(path):
            raise ConfigError(f"--saved_model={path}: folder not found")
        if os.path.isfile(os.path.join(path, "saved_model.pb")):
            return path
        versions = [int(v) for v in os.listdir(path)
                    if v.isdigit() and os.path.isfile(os.path.join(path, v, "saved_model.pb"))]
        if not versions:
            raise ConfigError(f"--saved_model={path}: no saved_model.pb here nor in a "
                              "numbered version folder")
        return os.path.join(path, str(max(versions)))

    def __call__(self, x: dict):
        return self.fn(**{self.input_name: x["rgbm"]})


def _model_features(need_train: bool) -> dict:
    """Features of query, gallery (and train) from --model_dir or --saved_model."""
    import numpy as np

    from mgcam_tf.data import layouts
    from mgcam_tf.errors import ConfigError
    from mgcam_tf.evaluation import features as feat_lib

    if not FLAGS.data_dir:
        raise ConfigError("--data_dir is required with --model_dir or --saved_model")
    if FLAGS.model_dir:
        from mgcam_tf import training  # the trainer's module, only when a model is evaluated
        model = training.load_trained_model(FLAGS.model_dir)
    else:
        model = _SavedModelFeatures(FLAGS.saved_model)
    dataset = layouts.load_dataset(FLAGS.data_dir, layout=FLAGS.layout,
                                   missing_masks=FLAGS.missing_masks)
    data = {}
    splits = ["query", "gallery"] + (["train"] if need_train else [])
    for name in splits:
        split = getattr(dataset, name)
        out = feat_lib.split_features(model, split, batch_size=FLAGS.batch_size,
                                      flip_average=FLAGS.flip_average,
                                      progress=ProgressBar(f"{name} features", FLAGS.progress))
        data[f"{name}_features"] = out.features
        data[f"{name}_pids"] = out.pids
        data[f"{name}_camids"] = out.camids
        data[f"{name}_paths"] = np.array(out.paths, dtype=str)
    data["dataset"] = dataset.name
    return data


def _save_npz(path: str, data: dict) -> None:
    import numpy as np

    from mgcam_tf.evaluation import reports

    buffer = io.BytesIO()
    np.savez(buffer, **{k: v for k, v in data.items() if isinstance(v, np.ndarray)})
    reports.write_atomic(path, buffer.getvalue())


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    import numpy as np

    from mgcam_tf.errors import ConfigError
    from mgcam_tf.evaluation import distances, metrics, reports

    sources = [s for s in ("features", "model_dir", "saved_model") if getattr(FLAGS, s)]
    if len(sources) != 1:
        raise ConfigError("give exactly one of --features, --model_dir, --saved_model "
                          f"(got {', '.join('--' + s for s in sources) or 'none'})")
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
    if FLAGS.features:
        data = load_npz(FLAGS.features, need_train, bool(FLAGS.ranked_png))
        source = {"features": FLAGS.features}
    else:
        data = _model_features(need_train)
        source = {sources[0]: getattr(FLAGS, sources[0]), "data_dir": FLAGS.data_dir,
                  "dataset": data.pop("dataset")}
        if FLAGS.save_features:
            _save_npz(FLAGS.save_features, data)

    t0 = time.perf_counter()
    dist = distances.compute_distances(
        data["query_features"], data["gallery_features"], FLAGS.metric,
        train_features=data.get("train_features"), train_pids=data.get("train_pids"),
        k1=FLAGS.k1, k2=FLAGS.k2, lambda_value=FLAGS.lambda_value,
        progress=ProgressBar("re-ranking", FLAGS.progress and use_rerank))
    t_dist = time.perf_counter() - t0
    result = metrics.evaluate(dist, data["query_pids"], data["query_camids"],
                              data["gallery_pids"], data["gallery_camids"], ap=FLAGS.ap)
    settings = {"metric": FLAGS.metric, "ap": FLAGS.ap}
    if use_rerank:
        settings.update(k1=FLAGS.k1, k2=FLAGS.k2, lambda_value=FLAGS.lambda_value)
    if not FLAGS.features:
        settings["flip_average"] = FLAGS.flip_average
    summary = result.summary()
    print(reports.format_table(summary, settings, result.num_valid, result.num_invalid))
    if FLAGS.json_out:
        payload = dict(summary)
        payload.update(num_query=result.num_query, num_valid=result.num_valid,
                       num_invalid=result.num_invalid,
                       num_gallery=int(np.asarray(data["gallery_pids"]).shape[0]),
                       distance_seconds=round(t_dist, 3), settings={**settings, **source})
        reports.write_json(FLAGS.json_out, payload)
    if FLAGS.cmc_png:
        reports.write_cmc_curve(FLAGS.cmc_png, {FLAGS.metric: result.cmc})
    if FLAGS.ranked_png:
        if "query_paths" not in data:
            raise ConfigError("--ranked_png needs query_paths and gallery_paths")

        def paths(key):  # str, or bytes from an npz written elsewhere
            return [p.decode() if isinstance(p, bytes) else str(p) for p in data[key].tolist()]

        reports.write_ranked_list(
            FLAGS.ranked_png, dist, paths("query_paths"), paths("gallery_paths"),
            data["query_pids"], data["query_camids"],
            data["gallery_pids"], data["gallery_camids"], num_queries=FLAGS.ranked_queries)


def run():
    """Console-script entry point of mgcam-eval."""
    app.run(one_line_errors(main))


if __name__ == "__main__":
    run()
