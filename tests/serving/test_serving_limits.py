"""One request cannot take a served model down (issue 27): bounds read before decoding.

Decompression bombs (a 23000x23000 black PNG of about 0.5 MB, a JPEG, GIF
and BMP whose headers announce 30000x30000), requests of 4096 JPEGs and of
8192 crops, and absurd float inputs are each refused with an
`InvalidArgument` error naming the input element and its size. The bombs
are made here (small on disk) and sent in a child process that loads the
SavedModel as a serving process would; the child reports its peak memory
above its baseline (the loaded model after one normal request), which must
stay well under 500 MB. How fast the refusal is: benchmarks/bench_serving.py
(`--hostile`).
"""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from mgcam_tf.errors import ConfigError
from mgcam_tf.serving import export, limits

from harness import REPO
from serving_standins import SignatureRunner, shared_export

MAX_EXTRA_MB = 500

sys.path.insert(0, str(REPO))
from benchmarks.hostile_images import (bmp_claiming, gif_claiming, jpeg_claiming,  # noqa: E402
                                       png_bomb)


# ------------------------------------------------------------- in-process --------

def test_headers_give_the_decoded_size():
    pixels = np.random.default_rng(0).integers(0, 256, (37, 23, 3), dtype=np.uint8)
    files = [tf.io.encode_jpeg(pixels).numpy(), tf.io.encode_png(pixels).numpy(),
             gif_claiming(37, 23), bmp_claiming(37, 23), b"", b"garbage"]
    sizes = limits.encoded_sizes(tf.constant(files)).numpy()
    assert sizes.tolist() == [[37, 23]] * 4 + [[0, 0], [0, 0]]
    assert limits.encoded_sizes(tf.constant([png_bomb(300)])).numpy().tolist() == [[300, 300]]


def test_limits_are_positive_and_recorded():
    with pytest.raises(ConfigError, match="max_batch"):
        limits.ServingLimits(max_batch=0)
    with pytest.raises(ConfigError, match="max_request_pixels"):
        limits.ServingLimits(max_image_pixels=10, max_request_pixels=5)
    meta = export.read_metadata(shared_export()[1])
    assert meta["limits"] == limits.ServingLimits().as_dict()


@pytest.mark.parametrize("value", [3e38, 1e30, -1e6, 0.6])
def test_rgbm_outside_the_preprocessed_range_is_refused(value):
    runner = SignatureRunner(str(shared_export()[1]))
    rgbm = np.zeros((2, 160, 64, 4), np.float32)
    rgbm[1, 5, 5, 0] = value
    with pytest.raises(tf.errors.InvalidArgumentError, match="outside the preprocessed range"):
        runner.run(export.SIGNATURE_RGBM, {"rgbm": rgbm})


def test_rgbm_at_the_ends_of_the_range_is_served():
    from mgcam_tf.data.preprocess import preprocess

    runner = SignatureRunner(str(shared_export()[1]))
    image = np.zeros((2, 160, 64, 3), np.uint8)
    image[1] = 255
    mask = np.zeros((2, 160, 64, 1), np.uint8)
    mask[1] = 255
    rgbm = preprocess(image, mask)["rgbm"].numpy()
    assert runner.run(export.SIGNATURE_RGBM, {"rgbm": rgbm})["embedding"].shape == (2, 128)


def test_small_bounds_set_at_export_are_enforced(tmp_path):
    model = shared_export()[0]
    bounded = limits.ServingLimits(max_batch=3, max_image_pixels=100 * 100,
                                   max_request_pixels=150 * 100, max_request_bytes=20000)
    runner = SignatureRunner(str(export.export_saved_model(model, tmp_path, limits=bounded)))
    assert export.read_metadata(tmp_path)["limits"]["max_batch"] == 3
    small = tf.io.encode_png(np.zeros((100, 100, 3), np.uint8)).numpy()
    big = tf.io.encode_png(np.zeros((101, 100, 3), np.uint8)).numpy()
    noise = tf.io.encode_png(np.random.default_rng(0).integers(
        0, 256, (90, 90, 3), dtype=np.uint8)).numpy()

    def send(images):
        return runner.run(export.SIGNATURE_BYTES, {
            "image_bytes": np.array(images, object), "mask_bytes": np.array([b""] * len(images),
                                                                           object)})

    assert send([small])["embedding"].shape == (1, 128)
    cases = [([small] * 4, r"image_bytes holds 4 elements; a request may hold at most 3"),
             ([small, big], r"image_bytes\[1\] is a 100x101 image \(10100 pixels\)"),
             ([small, small], r"holds 20000 pixels in all; a request may hold at most 15000"),
             ([noise], r"image_bytes holds \d+ bytes; a request may hold at most 20000")]
    for images, message in cases:
        with pytest.raises(tf.errors.InvalidArgumentError, match=message):
            send(images)
    with pytest.raises(tf.errors.InvalidArgumentError, match="holds 4 elements"):
        runner.run(export.SIGNATURE_DEFAULT, {"image": np.zeros((4, 160, 64, 3), np.uint8),
                                              "mask": np.zeros((4, 160, 64, 1), np.uint8)})


# ------------------------------------------------------------- in a child process --------

CHILD = textwrap.dedent(r"""
    import json, sys
    import numpy as np
    import tensorflow as tf
    sys.path.insert(0, sys.argv[2])
    from benchmarks.peak_memory import peak_gb

    def rss_gb():
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:")) * 1024 / 1e9

    def reset_peak():   # VmHWM back to the current RSS (Linux >= 4.0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")

    cases = json.load(open(sys.argv[3]))
    loaded = tf.saved_model.load(sys.argv[1])
    sigs = loaded.signatures
    crop = tf.io.encode_jpeg(np.full((128, 64, 3), 128, np.uint8)).numpy()
    # Baseline: the model loaded and one normal request through each signature.
    for name, fn in sigs.items():
        args = fn.structured_input_signature[1]
        feeds = {}
        for arg, spec in args.items():
            if spec.dtype == tf.string:
                feeds[arg] = tf.constant([crop, crop] if arg == "image_bytes" else [b"", b""])
            elif arg == "rgbm":
                feeds[arg] = tf.zeros([2, 160, 64, 4])
            elif name.startswith("serving_image"):
                feeds[arg] = tf.zeros([2, 128, 64, 3], tf.uint8)
            else:
                feeds[arg] = tf.zeros([2, 160, 64, spec.shape[-1]], tf.uint8)
        fn(**feeds)
    results = {}
    for case in cases:
        feeds = {}
        for arg, spec in case["feeds"].items():
            if spec["kind"] == "files":
                feeds[arg] = tf.constant([open(p, "rb").read() for p in spec["paths"]])
            else:
                feeds[arg] = tf.zeros(spec["shape"], spec["dtype"])
        baseline = rss_gb()
        reset_peak()
        try:
            sigs[case["signature"]](**feeds)
            message = None
        except tf.errors.InvalidArgumentError as err:
            message = err.message
        del feeds
        results[case["id"]] = {"message": message, "extra_mb": (peak_gb() - baseline) * 1000}
    print(json.dumps(results))
""")


@pytest.fixture(scope="module")
def image_export(mask_model, tmp_path_factory):
    import keras

    from mgcam_tf.modeling import models

    keras.utils.set_random_seed(0)
    model = models.build_model(num_ids=5, architecture="mgcam")
    return export.export_saved_model(model, tmp_path_factory.mktemp("export"),
                                     mask_model_path=mask_model)


@pytest.fixture(scope="module")
def child_results(image_export, tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile")
    files = {"png": png_bomb(23000), "jpeg": jpeg_claiming(30000, 30000),
             "gif": gif_claiming(30000, 30000), "bmp": bmp_claiming(30000, 30000),
             "crop": tf.io.encode_jpeg(np.random.default_rng(0).integers(
                 0, 256, (128, 64, 3), dtype=np.uint8)).numpy()}
    assert len(files["png"]) < 1_000_000
    paths = {}
    for name, data in files.items():
        paths[name] = str(folder / name)
        pathlib.Path(paths[name]).write_bytes(data)

    def image_bytes(signature, names, mask=False):
        feeds = {"image_bytes": {"kind": "files", "paths": [paths[n] for n in names]}}
        if mask:
            feeds["mask_bytes"] = {"kind": "files", "paths": [str(folder / "empty")] * len(names)}
        return {"signature": signature, "feeds": feeds}

    (folder / "empty").write_bytes(b"")
    cases = []
    for signature in (export.SIGNATURE_IMAGE_BYTES, export.SIGNATURE_IMAGE_BYTES_DETAILS,
                      export.SIGNATURE_BYTES):
        mask = signature == export.SIGNATURE_BYTES
        for kind in ("png", "jpeg", "gif", "bmp"):
            cases.append({"id": f"{signature}/{kind}",
                          **image_bytes(signature, ["crop", kind], mask)})
        cases.append({"id": f"{signature}/4096", **image_bytes(signature, ["crop"] * 4096, mask)})
    cases.append({"id": "mask_bytes/png", "signature": export.SIGNATURE_BYTES, "feeds": {
        "image_bytes": {"kind": "files", "paths": [paths["crop"]]},
        "mask_bytes": {"kind": "files", "paths": [paths["png"]]}}})
    cases.append({"id": "serving_default/8192", "signature": export.SIGNATURE_DEFAULT, "feeds": {
        "image": {"kind": "zeros", "shape": [8192, 160, 64, 3], "dtype": "uint8"},
        "mask": {"kind": "zeros", "shape": [8192, 160, 64, 1], "dtype": "uint8"}}})
    cases.append({"id": "serving_image/huge", "signature": export.SIGNATURE_IMAGE, "feeds": {
        "image": {"kind": "zeros", "shape": [1, 8000, 5000, 3], "dtype": "uint8"}}})
    (folder / "cases.json").write_text(json.dumps(cases))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH="", CUDA_VISIBLE_DEVICES="")
    out = subprocess.run([sys.executable, "-c", CHILD, str(image_export), str(REPO),
                          str(folder / "cases.json")],
                         capture_output=True, text=True, env=env, timeout=600, cwd=folder)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


EXPECTED = {
    "png": r"image_bytes\[1\] is a 23000x23000 image \(529000000 pixels\)",
    "jpeg": r"image_bytes\[1\] is a 30000x30000 image \(900000000 pixels\)",
    "gif": r"image_bytes\[1\] is a 30000x30000 image",
    "bmp": r"image_bytes\[1\] is a 30000x30000 image",
    "4096": r"image_bytes holds 4096 elements; a request may hold at most 256",
}


@pytest.mark.parametrize("signature", [export.SIGNATURE_IMAGE_BYTES,
                                       export.SIGNATURE_IMAGE_BYTES_DETAILS,
                                       export.SIGNATURE_BYTES])
@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_hostile_bytes_are_refused_within_bounded_memory(child_results, signature, kind):
    import re

    got = child_results[f"{signature}/{kind}"]
    assert got["message"] is not None and re.search(EXPECTED[kind], got["message"]), got
    assert got["extra_mb"] < MAX_EXTRA_MB, got


@pytest.mark.parametrize("case, expected", [
    ("mask_bytes/png", r"mask_bytes\[0\] is a 23000x23000 image"),
    ("serving_default/8192", r"input image holds 8192 elements; a request may hold at most 256"),
    ("serving_image/huge", r"input image holds 5000x8000 images \(40000000 pixels\)"),
])
def test_other_hostile_requests_are_refused(child_results, case, expected):
    import re

    got = child_results[case]
    assert got["message"] is not None and re.search(expected, got["message"]), got
    assert got["extra_mb"] < MAX_EXTRA_MB, got


def test_rank2_bytes_get_the_rank_message_and_a_corrupt_file_is_named(image_export, tmp_path):
    from mgcam_tf.errors import DataError
    from mgcam_tf.serving.loader import SavedModelEmbedder

    runner = SignatureRunner(str(image_export))
    for signature in (export.SIGNATURE_IMAGE_BYTES, export.SIGNATURE_BYTES):
        feeds = {"image_bytes": np.array([[b"x", b"y"]], object)}
        if signature == export.SIGNATURE_BYTES:
            feeds["mask_bytes"] = np.array([[b"", b""]], object)
        with pytest.raises(tf.errors.InvalidArgumentError, match="another rank"):
            runner.run(signature, feeds)
    good = tmp_path / "good.jpg"
    good.write_bytes(tf.io.encode_jpeg(np.full((128, 64, 3), 90, np.uint8)).numpy())
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(good.read_bytes()[:200])       # a JPEG header, then nothing
    embedder = SavedModelEmbedder(image_export)
    with pytest.raises(DataError, match=f"{broken}: cannot decode the image"):
        embedder.embed_image_files([str(good), str(broken)])


def test_files_decoded_by_the_loader_are_bounded_too(tmp_path):
    """mgcam-search/-verify/-extract decode files in the tf.data pipeline, outside the
    signatures: the same bound, read from the header, names the file."""
    from mgcam_tf.errors import DataError
    from mgcam_tf.serving.loader import SavedModelEmbedder

    embedder = SavedModelEmbedder(shared_export()[1])
    assert embedder.limits == limits.ServingLimits()
    bomb = tmp_path / "bomb.jpg"
    bomb.write_bytes(jpeg_claiming(30000, 30000))
    good = tmp_path / "good.png"
    good.write_bytes(tf.io.encode_png(np.zeros((128, 64, 3), np.uint8)).numpy())
    with pytest.raises(DataError, match=f"{bomb}: a 30000x30000 image"):
        embedder.embed_files([str(good), str(bomb)], [None, None])
    mask_bomb = tmp_path / "mask.gif"
    mask_bomb.write_bytes(gif_claiming(20000, 20000))
    with pytest.raises(DataError, match=f"{mask_bomb}: a 20000x20000 image"):
        embedder.embed_files([str(good)], [str(mask_bomb)])
    assert embedder.embed_files([str(good)], [None]).shape == (1, 128)


def test_the_loader_splits_a_batch_over_max_batch(tmp_path):
    from mgcam_tf.data.preprocess import preprocess
    from mgcam_tf.serving.loader import SavedModelEmbedder

    model = shared_export()[0]
    folder = export.export_saved_model(model, tmp_path, limits=limits.ServingLimits(max_batch=2))
    embedder = SavedModelEmbedder(folder)
    image = np.random.default_rng(0).integers(0, 256, (5, 160, 64, 3), dtype=np.uint8)
    rgbm = preprocess(image, np.full((5, 160, 64, 1), 255, np.uint8))["rgbm"].numpy()
    got = embedder.embed_rgbm(rgbm)
    want = np.concatenate([embedder.embed_rgbm(rgbm[i:i + 1]) for i in range(5)])
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert set(embedder({"rgbm": rgbm})) == {"embedding", "attention"}
