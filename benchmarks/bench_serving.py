"""Serving speed of the exported SavedModel beside Keras `predict` on the same model.

  python benchmarks/bench_serving.py                  # about half a minute on 2 cores
  python benchmarks/bench_serving.py --repeats=5 --latency_calls=100

An MGCAM (751 ids, as Market-1501) is built and exported with
`mgcam_tf.serving.export`; the SavedModel is loaded back with `tf.saved_model.load`
(as a serving process would) and timed on its `serving_default` signature:
uint8 image [256, 160, 64, 3] and mask [256, 160, 64, 1] in, preprocessing
in the graph, embedding and attention out. Beside it, in the same run and
interleaved with it (so that other jobs on the machine slow both alike),
Keras `model.predict` on the same weights and the same batch, already
preprocessed (its preprocessing is not timed, which favours Keras). Keras
runs the whole model (three streams); the signature runs only what its
outputs need (full stream + attention branch).

Throughput: median over --repeats of one batch-256 call each. Latency:
batch-1 calls of the signature, median and 95th percentile.

When `pose_landmark_full.tflite` is available (--mask_in_graph=auto), the
export also holds the image-only signatures; `serving_image` is timed on
uint8 crops of --image_size (batch --image_batch_size, and batch 1). A second
export of the same model with the distilled mask network
(`--segmenter=distilled`, mgcam_tf/segmentation/distilled.py) is timed the
same way (keys `image_only_distilled_*`), and `serving_default` at
--image_batch_size beside both (`given_mask_images_per_s_at_image_batch`):
the ratios image-only / given-mask are `image_only*_ratio`.

The last line is one JSON object: savedmodel_images_per_s,
keras_images_per_s, latency_p50_ms, latency_p95_ms (plus a few more).

  python benchmarks/bench_serving.py --hostile        # about a minute

times hostile requests instead (issue 27; the refusal itself is tested in
tests/serving/test_serving_limits.py): a black 23000x23000 PNG of 0.5 MB,
a JPEG whose header claims 30000x30000, 4096 JPEG crops in one request and
8192 crops to serving_default, each sent to every signature it fits, beside
a normal request of two crops to the same signature (the baseline). Each
entry: seconds to the refusal (median of --repeats), the normal request's
seconds, and the peak resident memory the call added (MB). JSON keys:
hostile_max_refusal_s, hostile_max_extra_mb and one entry per case.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--latency_calls", type=int, default=50)
    parser.add_argument("--num_ids", type=int, default=751)
    parser.add_argument("--image_batch_size", type=int, default=64,
                        help="batch of the image-only signature (it runs BlazePose too)")
    parser.add_argument("--image_size", default="128x64",
                        help="HxW of the crops fed to serving_image (Market-1501: 128x64)")
    parser.add_argument("--mask_in_graph", choices=["auto", "false"], default="auto",
                        help="also time serving_image when pose_landmark_full.tflite is available")
    parser.add_argument("--hostile", action="store_true",
                        help="time the refusal of hostile requests (module doc) instead")
    args = parser.parse_args()
    if args.hostile:
        hostile(args)
        return

    import keras
    import tensorflow as tf

    from mgcam_tf.serving import export
    from mgcam_tf.modeling import models
    from mgcam_tf.data.preprocess import preprocess

    keras.utils.set_random_seed(0)
    model = models.model_from_config(models.model_config(args.num_ids))
    rng = np.random.default_rng(0)
    n = args.batch_size
    image = rng.integers(0, 256, (n, 160, 64, 3), dtype=np.uint8)
    mask = np.zeros((n, 160, 64, 1), np.uint8)
    mask[:, 20:-20, 16:-16] = 255
    rgbm = preprocess(image, mask)["rgbm"].numpy()

    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        t0 = time.perf_counter()
        mask_model = _mask_model(args)
        export_dir = export.export_saved_model(model, tmp, mask_model_path=mask_model)
        export_s = time.perf_counter() - t0
        loaded = tf.saved_model.load(str(export_dir))
        serving = loaded.signatures["serving_default"]
        image_t, mask_t = tf.constant(image), tf.constant(mask)

        def run_savedmodel():
            return serving(image=image_t, mask=mask_t)["embedding"].numpy()

        def run_keras():
            return model.predict(rgbm, batch_size=n, verbose=0)["h_full"]

        class EmbedOnly(keras.Model):
            """Keras predict of h_full alone: the stricter baseline, since
            predict on the model also runs the body and background streams."""

            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def call(self, x):
                return self.inner.embed(x)

        embed_only = EmbedOnly(model)

        def run_keras_embed():
            return embed_only.predict(rgbm, batch_size=n, verbose=0)

        # Warm-up (tracing, oneDNN primitive caches) and a fidelity check.
        max_diff = float(np.abs(run_savedmodel() - run_keras()).max())
        max_diff = max(max_diff, float(np.abs(run_savedmodel() - run_keras_embed()).max()))
        sm_times, keras_times, embed_times = [], [], []
        for _ in range(args.repeats):
            for fn, times in ((run_savedmodel, sm_times), (run_keras, keras_times),
                              (run_keras_embed, embed_times)):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
        one_image, one_mask = tf.constant(image[:1]), tf.constant(mask[:1])
        serving(image=one_image, mask=one_mask)
        latencies = []
        for _ in range(args.latency_calls):
            t0 = time.perf_counter()
            serving(image=one_image, mask=one_mask)["embedding"].numpy()
            latencies.append(time.perf_counter() - t0)
        h, w = (int(v) for v in args.image_size.split("x"))
        crops = tf.constant(rng.integers(0, 256, (args.image_batch_size, h, w, 3),
                                         dtype=np.uint8))

        def time_image_only(fn):
            # The image alone at the crops' own size: segmenter, mask,
            # preprocessing and the embedding, all in the graph.
            fn(image=crops)
            io_times, io_lat = [], []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                fn(image=crops)["embedding"].numpy()
                io_times.append(time.perf_counter() - t0)
            fn(image=crops[:1])
            for _ in range(max(5, args.latency_calls // 5)):
                t0 = time.perf_counter()
                fn(image=crops[:1])["embedding"].numpy()
                io_lat.append(time.perf_counter() - t0)
            return {"images_per_s": args.image_batch_size / float(np.median(io_times)),
                    "p50_ms": float(np.percentile(io_lat, 50)) * 1000,
                    "p95_ms": float(np.percentile(io_lat, 95)) * 1000}

        image_only = distilled = None
        if mask_model is not None:
            image_only = time_image_only(loaded.signatures[export.SIGNATURE_IMAGE])
        if args.mask_in_graph == "auto":
            from mgcam_tf.segmentation import distilled as distilled_net

            distilled_dir = export.export_saved_model(
                model, tmp, mask_model_path=distilled_net.shipped_weights_path(),
                segmenter="distilled")
            distilled = time_image_only(
                tf.saved_model.load(str(distilled_dir)).signatures[export.SIGNATURE_IMAGE])
        # The given-mask signature at the image-only batch, for the ratios.
        small_image, small_mask = tf.constant(image[:args.image_batch_size]), \
            tf.constant(mask[:args.image_batch_size])
        small_times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            serving(image=small_image, mask=small_mask)["embedding"].numpy()
            small_times.append(time.perf_counter() - t0)
        small_ips = args.image_batch_size / float(np.median(small_times))

    sm_ips = n / float(np.median(sm_times))
    keras_ips = n / float(np.median(keras_times))
    embed_ips = n / float(np.median(embed_times))
    p50, p95 = (float(np.percentile(latencies, q)) * 1000 for q in (50, 95))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"TensorFlow {tf.__version__}, {os.cpu_count()} CPUs, load average {load:.2f}")
    print(f"export: {export_s:.1f} s; SavedModel vs Keras max |diff| {max_diff:.2e}")
    print(f"batch {n}: SavedModel serving_default {sm_ips:.1f} images/s "
          f"(uint8 in, preprocessing in the graph)  |  Keras predict {keras_ips:.1f} images/s "
          f"(preprocessed input)  ->  x{sm_ips / keras_ips:.2f} "
          f"({'not slower' if sm_ips >= keras_ips else 'SLOWER'})")
    print(f"batch {n}: Keras predict of h_full alone {embed_ips:.1f} images/s  ->  "
          f"x{sm_ips / embed_ips:.2f} ({'not slower' if sm_ips >= embed_ips else 'SLOWER'})")
    print(f"batch 1 latency (SavedModel, {args.latency_calls} calls): median {p50:.1f} ms, "
          f"p95 {p95:.1f} ms")
    if image_only is not None:
        print(f"image-only serving_image ({args.image_size} uint8, mask made in the graph): "
              f"batch {args.image_batch_size} {image_only['images_per_s']:.1f} images/s; "
              f"batch 1 latency median {image_only['p50_ms']:.1f} ms, p95 "
              f"{image_only['p95_ms']:.1f} ms  (beside serving_default with a mask: "
              f"{sm_ips:.1f} images/s, {p50:.1f} ms)")
    if distilled is not None:
        print(f"image-only serving_image, distilled mask network: batch "
              f"{args.image_batch_size} {distilled['images_per_s']:.1f} images/s "
              f"(x{distilled['images_per_s'] / small_ips:.2f} of serving_default with a mask "
              f"at that batch, {small_ips:.1f} images/s); batch 1 latency median "
              f"{distilled['p50_ms']:.1f} ms, p95 {distilled['p95_ms']:.1f} ms")
    extra = {"given_mask_images_per_s_at_image_batch": round(small_ips, 1),
             "image_batch_size": args.image_batch_size}
    for key, timing in (("image_only", image_only), ("image_only_distilled", distilled)):
        if timing is not None:
            extra.update({f"{key}_images_per_s": round(timing["images_per_s"], 1),
                          f"{key}_ratio": round(timing["images_per_s"] / small_ips, 3),
                          f"{key}_latency_p50_ms": round(timing["p50_ms"], 2),
                          f"{key}_latency_p95_ms": round(timing["p95_ms"], 2)})
    print(json.dumps({**extra,
        "savedmodel_images_per_s": round(sm_ips, 1), "keras_images_per_s": round(keras_ips, 1),
        "keras_embed_images_per_s": round(embed_ips, 1),
        "latency_p50_ms": round(p50, 2), "latency_p95_ms": round(p95, 2),
        "speedup": round(sm_ips / keras_ips, 3), "batch_size": n, "repeats": args.repeats,
        "max_abs_diff": max_diff, "export_s": round(export_s, 2), "load_average": round(load, 2)}))


def _mask_model(args):
    """BlazePose-full's model file for the image-only signatures, or None (and why)
    when --mask_in_graph is off or the file cannot be had here."""
    from mgcam_tf.errors import DataError
    from mgcam_tf.segmentation import model_file

    if args.mask_in_graph != "auto":
        return None
    try:
        return model_file.resolve_model_path()
    except DataError as err:
        print(f"image-only signatures not timed: {err}")
        return None


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1000


def _reset_peak() -> None:
    """VmHWM back to the current RSS (Linux >= 4.0), so a call's own peak is read."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def hostile(args) -> None:
    import keras
    import tensorflow as tf

    from benchmarks.hostile_images import jpeg_claiming, png_bomb
    from benchmarks.peak_memory import peak_gb
    from mgcam_tf.modeling import models
    from mgcam_tf.serving import export

    keras.utils.set_random_seed(0)
    model = models.model_from_config(models.model_config(args.num_ids))
    mask_model = _mask_model(args)
    rng = np.random.default_rng(0)
    crop = tf.io.encode_jpeg(rng.integers(0, 256, (128, 64, 3), dtype=np.uint8)).numpy()
    bomb, liar = png_bomb(23000), jpeg_claiming(30000, 30000)
    print(f"23000x23000 PNG: {len(bomb) / 1e3:.0f} KB; 4096 crops: {4096 * len(crop) / 1e6:.1f} MB")
    with tempfile.TemporaryDirectory(prefix="bench-hostile-") as tmp:
        loaded = tf.saved_model.load(str(export.export_saved_model(model, tmp,
                                                                   mask_model_path=mask_model)))

        def feeds(signature, images):
            out = {"image_bytes": tf.constant(images)}
            if signature == export.SIGNATURE_BYTES:
                out["mask_bytes"] = tf.constant([b""] * len(images))
            return out

        cases = {}
        for signature in (export.SIGNATURE_BYTES, export.SIGNATURE_IMAGE_BYTES,
                          export.SIGNATURE_IMAGE_BYTES_DETAILS):
            if signature in loaded.signatures:
                cases[f"{signature}/png_23000"] = (signature, feeds(signature, [crop, bomb]))
                cases[f"{signature}/jpeg_30000"] = (signature, feeds(signature, [crop, liar]))
                cases[f"{signature}/4096_crops"] = (signature, feeds(signature, [crop] * 4096))
        cases["serving_default/8192_crops"] = (export.SIGNATURE_DEFAULT, {
            "image": tf.zeros([8192, 160, 64, 3], tf.uint8),
            "mask": tf.zeros([8192, 160, 64, 1], tf.uint8)})
        # Requests at the default bounds, which are served: the memory they
        # take is the documented bound (docs/SERVING.md).
        frame = tf.io.encode_jpeg(tf.image.resize(tf.constant(rng.integers(
            0, 256, (60, 60, 3), dtype=np.uint8)), (6000, 6000), "nearest")).numpy()
        signature = (export.SIGNATURE_IMAGE_BYTES if mask_model is not None
                     else export.SIGNATURE_BYTES)
        cases[f"at_bound/{signature}/36MP_image"] = (signature, feeds(signature, [frame]))
        cases[f"at_bound/{signature}/256_crops"] = (signature, feeds(signature, [crop] * 256))
        cases["at_bound/serving_default/256_crops"] = (export.SIGNATURE_DEFAULT, {
            "image": tf.zeros([256, 160, 64, 3], tf.uint8),
            "mask": tf.zeros([256, 160, 64, 1], tf.uint8)})
        results = {}
        for name, (signature, feed) in cases.items():
            fn = loaded.signatures[signature]
            normal = ({"image": feed["image"][:2], "mask": feed["mask"][:2]}
                      if signature == export.SIGNATURE_DEFAULT
                      else feeds(signature, [crop, crop]))
            fn(**normal)     # traced and warm
            refusals, normals, extra = [], [], 0.0
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                fn(**normal)
                normals.append(time.perf_counter() - t0)
                base = _rss_mb()
                _reset_peak()
                t0 = time.perf_counter()
                try:
                    fn(**feed)
                    refused = False
                except tf.errors.InvalidArgumentError:
                    refused = True
                refusals.append(time.perf_counter() - t0)
                extra = max(extra, peak_gb() * 1000 - base)
            results[name] = {"refused": refused, "refusal_s": round(float(np.median(refusals)), 4),
                             "normal_request_s": round(float(np.median(normals)), 4),
                             "extra_mb": round(extra, 1)}
            print(f"{name}: {'refused' if refused else 'served'} in "
                  f"{results[name]['refusal_s'] * 1000:.1f} ms (a normal request of two: "
                  f"{results[name]['normal_request_s'] * 1000:.1f} ms), "
                  f"+{extra:.0f} MB peak")
    bad = {k: r for k, r in results.items() if not k.startswith("at_bound/")}
    print(json.dumps({"hostile_max_refusal_s": max(r["refusal_s"] for r in bad.values()),
                      "hostile_max_extra_mb": max(r["extra_mb"] for r in bad.values()),
                      "all_refused": all(r["refused"] for r in bad.values()),
                      "at_bound_max_extra_mb": max(r["extra_mb"] for k, r in results.items()
                                                   if k.startswith("at_bound/")),
                      "repeats": args.repeats, **results}))


if __name__ == "__main__":
    main()
