"""The mask made inside the served model (issue 14): image in, embedding out.

Fidelity on the 200 CUHK03 queries (in-graph masks against the shared
ones, embeddings against the two-step path: shared masks through
`serving_bytes`), rank-1/mAP of the query/gallery split through both paths,
a fresh process without mgcam_tf, TF Serving's TF1 loader and bad input.
Run with -s to see the figures. Needs `pose_landmark_full.tflite` (skipped
with the reason otherwise) and ../shared/data.
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from mgcam_tf.errors import DataError
from mgcam_tf.segmentation import model_file
from mgcam_tf.serving import export

from serving_standins import SignatureRunner, perturb_batch_norm
from harness import REPO

# Embeddings of the image-only path against the two-step path (float32
# [N, 128], values of order 1): equal where the masks are equal; where a few
# boundary pixels differ, the difference stays below this.
EMBEDDING_ATOL = 2e-2


@pytest.fixture(scope="module")
def exported(mask_model, tmp_path_factory):
    import keras

    from mgcam_tf.modeling import models

    keras.utils.set_random_seed(0)
    model = models.build_model(num_ids=5, architecture="mgcam")
    perturb_batch_norm(model)
    return export.export_saved_model(model, tmp_path_factory.mktemp("export"),
                                     mask_model_path=mask_model)


@pytest.fixture(scope="module")
def loaded(exported):
    return tf.saved_model.load(str(exported))


@pytest.fixture(scope="module")
def runner(exported):
    return SignatureRunner(str(exported))


def files(shared_data, split):
    folder = shared_data / "cuhk03_pair1" / split
    images = sorted(folder.glob("*.jpg"))
    masks = [folder.parent / f"{split}_seg" / (p.stem + ".png") for p in images]
    return images, masks


def batched(fn, arrays, size=32):
    """A signature run on `arrays` ({input name: array}) in chunks, outputs concatenated."""
    out = {}
    n = len(next(iter(arrays.values())))
    for start in range(0, n, size):
        part = fn(**{k: tf.constant(a[start:start + size]) for k, a in arrays.items()})
        for k, v in part.items():
            out.setdefault(k, []).append(v.numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


@pytest.fixture(scope="module")
def query_outputs(loaded, shared_data):
    images, masks = files(shared_data, "query")
    image_bytes = np.array([p.read_bytes() for p in images], object)
    mask_bytes = np.array([p.read_bytes() for p in masks], object)
    ours = batched(loaded.signatures[export.SIGNATURE_IMAGE_BYTES_DETAILS],
                   {"image_bytes": image_bytes})
    two_step = batched(loaded.signatures[export.SIGNATURE_BYTES],
                       {"image_bytes": image_bytes, "mask_bytes": mask_bytes})
    return masks, ours, two_step


def test_in_graph_masks_match_the_shared_masks(query_outputs):
    masks, ours, _ = query_outputs
    ious, identical = [], 0
    for path, png in zip(masks, ours[export.OUTPUT_MASK_PNG]):
        want = tf.io.decode_png(path.read_bytes()).numpy()[..., 0] > 127
        got = tf.io.decode_png(png).numpy()[..., 0] > 127
        assert got.shape == want.shape, path
        ious.append((got & want).sum() / max((got | want).sum(), 1))
        identical += bool((got == want).all())
    iou = float(np.mean(ious))
    print(f"\nin-graph masks vs shared query_seg (200 CUHK03 queries): mean IoU {iou:.5f}, "
          f"min {min(ious):.5f}, bit-identical {identical}/200")
    assert len(ious) == 200
    assert iou >= 0.99


def test_image_only_embeddings_match_the_two_step_path(query_outputs):
    _, ours, two_step = query_outputs
    diff = np.abs(ours[export.OUTPUT_EMBEDDING] - two_step[export.OUTPUT_EMBEDDING])
    scale = np.abs(two_step[export.OUTPUT_EMBEDDING]).max()
    att = np.abs(ours[export.OUTPUT_ATTENTION] - two_step[export.OUTPUT_ATTENTION]).max()
    print(f"\nembedding |image-only - two-step|: max {diff.max():.2e} (values up to "
          f"{scale:.2f}), mean {diff.mean():.2e}; attention max {att:.2e}")
    assert diff.max() <= EMBEDDING_ATOL


def test_rank1_and_map_equal_the_two_step_path(loaded, shared_data):
    from mgcam_tf.data import layouts
    from mgcam_tf.evaluation import metrics

    def embed(split, image_only):
        images, masks = files(shared_data, split)
        image_bytes = np.array([p.read_bytes() for p in images], object)
        if image_only:
            out = batched(loaded.signatures[export.SIGNATURE_IMAGE_BYTES],
                          {"image_bytes": image_bytes})
        else:
            mask_bytes = np.array([p.read_bytes() for p in masks], object)
            out = batched(loaded.signatures[export.SIGNATURE_BYTES],
                          {"image_bytes": image_bytes, "mask_bytes": mask_bytes})
        pids = np.array([int(p.name[:4]) for p in images])
        camids = np.array([int(p.name[6]) for p in images])
        return out[export.OUTPUT_EMBEDDING], pids, camids

    del layouts
    results = {}
    for image_only in (False, True):
        qf, qp, qc = embed("query", image_only)
        gf, gp, gc = embed("bounding_box_test", image_only)
        dist = ((qf[:, None] - gf[None]) ** 2).sum(-1)
        results[image_only] = metrics.evaluate(dist, qp, qc, gp, gc)
    two, one = results[False], results[True]
    print(f"\nCUHK03 pair 1 (200 queries, 775 gallery), untrained MGCAM: two-step rank-1 "
          f"{two.cmc[0]:.4f} mAP {two.mAP:.4f}; image-only rank-1 {one.cmc[0]:.4f} "
          f"mAP {one.mAP:.4f}")
    assert one.cmc[0] == two.cmc[0]
    assert abs(one.mAP - two.mAP) < 1e-3


def test_pixels_signature_equals_bytes_signature(loaded, shared_data):
    images, _ = files(shared_data, "query")
    pixels_fn = loaded.signatures[export.SIGNATURE_IMAGE_DETAILS]
    bytes_fn = loaded.signatures[export.SIGNATURE_IMAGE_BYTES_DETAILS]
    for path in images[:3]:
        data = path.read_bytes()
        accurate = tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE")
        # The same pixels for the mask; serving_image_bytes embeds TF's default
        # decode (as serving_bytes does), so only the masks are compared exactly.
        got = pixels_fn(image=accurate[tf.newaxis])
        want = bytes_fn(image_bytes=tf.constant([data]))
        np.testing.assert_array_equal(got[export.OUTPUT_MASK].numpy()[0],
                                      tf.io.decode_png(want[export.OUTPUT_MASK_PNG][0]).numpy())
        default = pixels_fn(image=tf.io.decode_image(data, channels=3)[tf.newaxis])
        # A batch of one size: the same image twice gives the same rows.
        twice = loaded.signatures[export.SIGNATURE_IMAGE](
            image=tf.stack([accurate, accurate]))[export.OUTPUT_EMBEDDING].numpy()
        np.testing.assert_allclose(twice[0], twice[1], atol=1e-6)
        assert default[export.OUTPUT_EMBEDDING].shape == (1, 128)


def test_fresh_process_without_mgcam_tf_embeds_jpeg_bytes(exported, loaded, shared_data,
                                                          tmp_path):
    jpeg = sorted((shared_data / "cuhk03_pair1" / "query").glob("*.jpg"))[0]
    script = textwrap.dedent(f"""
        import json, sys
        import tensorflow as tf
        loaded = tf.saved_model.load({str(exported)!r})
        fn = loaded.signatures["serving_image_bytes"]
        out = fn(image_bytes=tf.constant([open({str(jpeg)!r}, "rb").read()]))
        assert not any(m.startswith("mgcam_tf") for m in sys.modules), "mgcam_tf imported"
        print(json.dumps({{"keys": sorted(out), "embedding": out["embedding"].numpy().tolist()}}))
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=tmp_path, env={**env, "TF_CPP_MIN_LOG_LEVEL": "3"}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["keys"] == ["embedding"]
    want = loaded.signatures[export.SIGNATURE_IMAGE_BYTES](
        image_bytes=tf.constant([jpeg.read_bytes()]))["embedding"].numpy()
    np.testing.assert_allclose(np.array(result["embedding"]), want, atol=1e-5)


def test_tf1_loader_lists_predict_for_every_signature(runner, shared_data):
    sigs = runner.signatures
    assert set(export.SIGNATURES + export.MASK_IN_GRAPH_SIGNATURES) <= set(sigs)
    for name, sig in sigs.items():
        if not name.startswith("__"):
            assert sig.method_name == export.PREDICT_METHOD, name
    jpeg = sorted((shared_data / "cuhk03_pair1" / "query").glob("*.jpg"))[0].read_bytes()
    out = runner.run(export.SIGNATURE_IMAGE_BYTES,
                     {export.INPUT_IMAGE_BYTES: np.array([jpeg, jpeg], object)})
    assert out[export.OUTPUT_EMBEDDING].shape == (2, 128)
    pixels = tf.io.decode_jpeg(jpeg).numpy()[None]
    out = runner.run(export.SIGNATURE_IMAGE_DETAILS, {export.INPUT_IMAGE: pixels})
    assert out[export.OUTPUT_MASK].shape == (*pixels.shape[:3], 1)
    assert set(np.unique(out[export.OUTPUT_MASK])) <= {0, 255}


@pytest.mark.parametrize("signature, feed, words", [
    ("serving_image", np.zeros((0, 100, 50, 3), np.uint8), ["image", "empty"]),
    ("serving_image", np.zeros((1, 0, 50, 3), np.uint8), ["image", "empty"]),
    ("serving_image", np.zeros((1, 100, 50, 4), np.uint8), ["image", "shape"]),
    ("serving_image", np.zeros((100, 50, 3), np.uint8), ["image", "shape [100 50 3]"]),
    ("serving_image_bytes", np.array([], object), ["image_bytes", "empty"]),
    ("serving_image_bytes", np.array([b"not an image"], object), ["image_bytes[0]", "JPEG"]),
    ("serving_image_bytes", np.array([[b"x"]], object), ["image_bytes"]),
])
def test_bad_input_is_invalid_argument_naming_the_input(runner, signature, feed, words):
    name = export.INPUT_IMAGE if signature == "serving_image" else export.INPUT_IMAGE_BYTES
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        runner.run(signature, {name: feed})
    for word in words:
        assert word in info.value.message, info.value.message


def test_wrong_dtype_is_rejected(runner):
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError, TypeError)):
        runner.run("serving_image", {"image": np.zeros((1, 100, 50, 3), np.float32)})


def test_metadata_records_the_mask_model(exported):
    info = export.read_metadata(exported)
    assert info["mask_in_graph"]["sha256"] == model_file.MODEL_SHA256
    assert set(export.MASK_IN_GRAPH_SIGNATURES) <= set(info["signatures"])
    assert info["signatures"]["serving_image"]["inputs"]["image"] == ["uint8", [-1, -1, -1, 3]]


def test_rest_client_sends_images_alone(exported, loaded, shared_data):
    from serving_standins import RestStandIn

    from mgcam_tf.serving import client

    jpegs = [p.read_bytes() for p in
             sorted((shared_data / "cuhk03_pair1" / "query").glob("*.jpg"))[:3]]
    server = RestStandIn(str(exported), "mgcam")
    try:
        rest = client.RestClient(server.url, model_name="mgcam", batch_size=2)
        got = rest.predict_images(jpegs)["embedding"]
    finally:
        server.stop()
    want = loaded.signatures[export.SIGNATURE_IMAGE_BYTES](
        image_bytes=tf.constant(jpegs))["embedding"].numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_loader_embeds_image_files_without_masks(exported, loaded, shared_data, tmp_path):
    from mgcam_tf.retrieval import user_images
    from mgcam_tf.serving.loader import SavedModelEmbedder

    images = sorted((shared_data / "cuhk03_pair1" / "query").glob("*.jpg"))[:3]
    embedder = SavedModelEmbedder(exported)
    assert embedder.has_mask_in_graph
    got = embedder.embed_image_files([str(p) for p in images], batch_size=2)
    want = loaded.signatures[export.SIGNATURE_IMAGE_BYTES](
        image_bytes=tf.constant([p.read_bytes() for p in images]))["embedding"].numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)
    # A copy without its mask beside it: the export makes the mask; the
    # other keeps its shared mask (X_seg/NAME.png) and goes through serving_rgbm.
    lone = tmp_path / "lone.jpg"
    lone.write_bytes(images[0].read_bytes())
    masks = user_images.resolve_masks([str(lone), str(images[1])], "auto", in_graph=True)
    assert masks[0] == user_images.MASK_IN_GRAPH and masks[1].endswith(".png")
    both = embedder.embed_images([str(lone), str(images[1])], masks)
    np.testing.assert_allclose(both[0], want[0], atol=1e-5)
    np.testing.assert_allclose(both[1], want[1], atol=EMBEDDING_ATOL)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(DataError, match="bad.jpg"):
        embedder.embed_image_files([str(bad)])


def test_cli_export_mask_in_graph_default_and_false(tmp_path, mask_model):
    import keras

    from mgcam_tf.modeling import models
    from mgcam_tf.training import run_dir

    keras.utils.set_random_seed(0)
    model = models.build_model(num_ids=5, architecture="mgcam")
    run_dir.prepare_model_dir(tmp_path / "run", models.model_config(5), {})
    run_dir.checkpoint_manager(tmp_path / "run", model).save()
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3",
           model_file.ENV_MODEL: str(mask_model)}
    for flag, expect in (([], True), (["--mask_in_graph=false"], False)):
        proc = subprocess.run(
            [sys.executable, "-m", "mgcam_tf.cli.export", f"--model_dir={tmp_path / 'run'}",
             f"--export_dir={tmp_path / 'export'}", *flag],
            capture_output=True, text=True, env=env, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert ("serving_image_bytes:" in proc.stdout) == expect, proc.stdout
    info = export.read_metadata(tmp_path / "export" / "1")
    assert "mask_in_graph" in info and "mask_in_graph" not in export.read_metadata(
        tmp_path / "export" / "2")
