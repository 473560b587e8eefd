"""What TFLite (float32, float16, int8) and ONNX cost the shipped preset in accuracy and speed.

  nice -n 5 python benchmarks/bench_tflite.py          # about 2 minutes on 2 shared cores
  python benchmarks/bench_tflite.py --data=../shared/data/cuhk03_pair1 --latency_calls=100

The preset `mgcam_siamese_cuhk03` is exported as a SavedModel (its
`serving_rgbm` signature, loaded back with `tf.saved_model.load`, as a
serving process would) and converted with `mgcam_tf.serving.tflite` to the
three TFLite files (int8 calibrated on --representative_images crops of the
data set's *train* split, so no test image calibrates) and, when tf2onnx and
onnxruntime are installed, to ONNX. Every format embeds the same
preprocessed query and gallery crops of --data (`eval_dataset`, file
order); each set of features is evaluated with `ReidEvaluator` (Euclidean,
official AP) under the single_query and all_queries protocols.

Speed: images/s of batch-1 calls (median of --latency_calls calls per
format, after a warm-up, the formats interleaved in 10 rounds), the
deployment case of one crop at a time; TFLite and onnxruntime with
--tflite_threads threads. The SavedModel's size counts every variable of the
model (the body/background streams too); the other files hold only what
the embedding needs.

The last line is one JSON object: savedmodel_/float32_/float16_/int8_(/onnx_)
rank1 and mAP (single_query), the same with _all_queries, _size_mb,
_images_per_s (batch 1), _max_abs_diff (max |embedding - SavedModel's|) and
_max_rel_diff (max ||embedding - SavedModel's|| / ||SavedModel's||).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys
import tempfile
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _batches(rgbm: np.ndarray, size: int):
    for start in range(0, len(rgbm), size):
        yield rgbm[start:start + size]


def _images_per_s(fns: dict, one: np.ndarray, calls: int, rounds: int = 10) -> dict:
    """Batch-1 images/s of each function: median call time, the formats timed in
    interleaved rounds so that other jobs on the machine slow them alike."""
    times = {name: [] for name in fns}
    for fn in fns.values():
        for _ in range(5):   # warm-up
            fn(one)
    for _ in range(rounds):
        for name, fn in fns.items():
            for _ in range(max(1, calls // rounds)):
                start = time.perf_counter()
                fn(one)
                times[name].append(time.perf_counter() - start)
    return {name: 1.0 / statistics.median(t) for name, t in times.items()}


def _size_mb(path: pathlib.Path) -> float:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6
    return path.stat().st_size / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "cuhk03_pair1"))
    parser.add_argument("--preset", default="mgcam_siamese_cuhk03")
    parser.add_argument("--representative_images", type=int, default=200)
    parser.add_argument("--batch_size", type=int, default=32,
                        help="batch of the accuracy passes (speed is timed on batch 1)")
    parser.add_argument("--latency_calls", type=int, default=100)
    parser.add_argument("--tflite_threads", type=int, default=2)
    args = parser.parse_args()

    import tensorflow as tf

    from mgcam_tf import presets
    from mgcam_tf.data import layouts, pipeline
    from mgcam_tf.evaluation import evaluator, features
    from mgcam_tf.serving import export, tflite

    tf.get_logger().setLevel("ERROR")
    dataset = layouts.load_dataset(args.data)
    model = presets.load_preset(args.preset)
    splits = {"query": dataset.query, "gallery": dataset.gallery}
    # The crops once, preprocessed by the evaluation's own pipeline: every
    # format sees the very same float32 inputs.
    rgbm = {name: np.concatenate([b["rgbm"].numpy() for b in pipeline.eval_dataset(split, 64)])
            for name, split in splits.items()}
    one = rgbm["query"][:1]
    work = pathlib.Path(tempfile.mkdtemp(prefix="bench-tflite-"))
    out: dict = {"data": args.data, "preset": args.preset,
                 "num_query": len(dataset.query), "num_gallery": len(dataset.gallery)}

    target = export.export_saved_model(model, work / "saved_model", mask_model_path=None)
    serving = tf.saved_model.load(str(target)).signatures[export.SIGNATURE_RGBM]

    def savedmodel_embed(x):
        return serving(rgbm=tf.constant(x))[export.OUTPUT_EMBEDDING].numpy()

    embedders = {"savedmodel": (savedmodel_embed, target)}
    representative = tflite.representative_rgbm(dataset.train, args.representative_images)
    for quantization in tflite.QUANTIZATIONS:
        start = time.perf_counter()
        path = tflite.write_tflite(model, work / f"mgcam_rgbm_{quantization}.tflite",
                                   quantization,
                                   representative if quantization == "int8" else None)
        out[f"{quantization}_convert_s"] = round(time.perf_counter() - start, 1)
        embedders[quantization] = (tflite.TFLiteEmbedder(path, args.tflite_threads), path)
    try:
        import onnxruntime

        path = tflite.write_onnx(model, work / "mgcam_rgbm.onnx")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = args.tflite_threads
        session = onnxruntime.InferenceSession(str(path), options,
                                               providers=["CPUExecutionProvider"])
        input_name = session.get_inputs()[0].name
        embedders["onnx"] = (lambda x: session.run(None, {input_name: x})[0], path)
    except ImportError as err:
        out["onnx"] = f"skipped: {err}"

    reference = None
    for name, (embed, path) in embedders.items():
        feats = {s: np.concatenate([embed(b) for b in _batches(rgbm[s], args.batch_size)])
                 for s in splits}
        stacked = np.concatenate([feats["query"], feats["gallery"]])
        if reference is None:
            reference = stacked
        out[f"{name}_max_abs_diff"] = float(np.abs(stacked - reference).max())
        # The same, relative to each embedding's norm (the features are not unit length).
        out[f"{name}_max_rel_diff"] = float((np.linalg.norm(stacked - reference, axis=1)
                                             / np.linalg.norm(reference, axis=1)).max())
        query = features.features_of_split(feats["query"], dataset.query)
        gallery = features.features_of_split(feats["gallery"], dataset.gallery)
        for protocol in evaluator.PROTOCOLS:
            summary = evaluator.ReidEvaluator("euclidean", "official", protocol).evaluate(
                query, gallery).summary()
            suffix = "" if protocol == "single_query" else "_all_queries"
            out[f"{name}_rank1{suffix}"] = round(summary["rank1"], 4)
            out[f"{name}_mAP{suffix}"] = round(summary["mAP"], 4)
        out[f"{name}_size_mb"] = round(_size_mb(pathlib.Path(path)), 2)
    speeds = _images_per_s({n: e for n, (e, _) in embedders.items()}, one, args.latency_calls)
    for name, speed in speeds.items():
        out[f"{name}_images_per_s"] = round(speed, 1)
        print(f"{name:>10}: rank-1 {out[f'{name}_rank1']:.4f} mAP {out[f'{name}_mAP']:.4f} "
              f"(all queries {out[f'{name}_rank1_all_queries']:.4f} / "
              f"{out[f'{name}_mAP_all_queries']:.4f}), {out[f'{name}_size_mb']:.2f} MB, "
              f"{speed:.0f} images/s (batch 1), max |diff| {out[f'{name}_max_abs_diff']:.2e} "
              f"(relative {out[f'{name}_max_rel_diff']:.2e})", flush=True)
    print(json.dumps(out, sort_keys=True))


if __name__ == "__main__":
    main()
