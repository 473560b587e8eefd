"""SavedModel export: layout, fidelity in a process without mgcam_tf, TF Serving's
view of it (saved_model_cli, TF1 loader by tensor names), bad input, mgcam-export."""

import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from mgcam_tf.serving import export
from mgcam_tf.modeling import models
from mgcam_tf.training import run_dir
from mgcam_tf.data.preprocess import preprocess
from mgcam_tf.errors import ConfigError

from serving_standins import SignatureRunner, shared_export
from harness import REPO



def make_model_dir(path: pathlib.Path, model) -> pathlib.Path:
    """A model directory with one checkpoint of `model` (num_ids 5)."""
    run_dir.prepare_model_dir(path, models.model_config(5), {})
    run_dir.checkpoint_manager(path, model).save()
    return path


def random_batch(n: int, seed: int = 0, size=(160, 64)):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (n, *size, 3), dtype=np.uint8)
    mask = np.zeros((n, *size, 1), np.uint8)
    mask[:, size[0] // 8: -size[0] // 8, size[1] // 4: -size[1] // 4] = 255
    return image, mask


def keras_reference(model, image, mask):
    out = model(preprocess(image, mask)["rgbm"], training=False)
    return {k: np.asarray(v) for k, v in out.items()}


@pytest.fixture(scope="module")
def model():
    return shared_export()[0]


@pytest.fixture(scope="module")
def exported():
    # The in-memory model, not a checkpoint: see test_model_dir_checkpoint_restores_the_saved_model.
    return shared_export()[1]


@pytest.fixture(scope="module")
def model_dir(model, tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("run"), model)


@pytest.fixture(scope="module")
def runner(exported):
    return SignatureRunner(str(exported))


def test_layout_versions_and_metadata(exported, model):
    base = exported.parent
    assert exported.name == "1"
    assert (exported / "saved_model.pb").is_file() and (exported / "variables").is_dir()
    # Only the version folder: no temporary folder left beside it.
    assert sorted(p.name for p in base.iterdir()) == ["1"]
    meta = export.read_metadata(base)
    assert meta["model"]["num_ids"] == 5 and meta["attention_output"] is True
    assert meta["signatures"]["serving_default"]["inputs"] == {
        "image": ["uint8", [-1, 160, 64, 3]], "mask": ["uint8", [-1, 160, 64, 1]]}
    assert meta["signatures"]["serving_default"]["outputs"] == {
        "embedding": ["float32", [-1, 128]], "attention": ["float32", [-1, 40, 16, 1]]}
    assert export.resolve_export(base) == exported
    assert export.next_version(base) == 2
    with pytest.raises(ConfigError, match="exists already"):
        export.export_saved_model(model, base, version=1)


def test_failed_export_leaves_nothing(model, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        pathlib.Path(args[1], "saved_model.pb").write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tf.saved_model, "save", broken)
    with pytest.raises(ConfigError, match="cannot write the export"):
        export.export_saved_model(model, tmp_path / "base", 3)
    assert list((tmp_path / "base").iterdir()) == []


FRESH_PROCESS = textwrap.dedent("""
    import sys
    import numpy as np
    import tensorflow as tf
    data = np.load(sys.argv[1], allow_pickle=True)
    loaded = tf.saved_model.load(sys.argv[2])
    out = {}
    for n in (1, 5):
        r = loaded.signatures["serving_default"](image=tf.constant(data["image"][:n]),
                                                 mask=tf.constant(data["mask"][:n]))
        out[f"default_embedding_{n}"] = r["embedding"].numpy()
        out[f"default_attention_{n}"] = r["attention"].numpy()
    r = loaded.signatures["serving_bytes"](image_bytes=tf.constant(list(data["image_bytes"])),
                                           mask_bytes=tf.constant(list(data["mask_bytes"])))
    out["bytes_embedding"] = r["embedding"].numpy()
    r = loaded.signatures["serving_rgbm"](rgbm=tf.constant(data["rgbm"]))
    out["rgbm_embedding"] = r["embedding"].numpy()
    assert not any(m.startswith("mgcam_tf") for m in sys.modules), "mgcam_tf was imported"
    np.savez(sys.argv[3], **out)
""")


def test_fidelity_in_a_fresh_process_without_mgcam_tf(model, exported, tmp_path):
    image, mask = random_batch(5)
    want = keras_reference(model, image, mask)
    # Encoded files of other sizes for the bytes signature (resized in the graph).
    big_image, big_mask = random_batch(3, seed=1, size=(128, 48))
    files = [tf.io.encode_png(big_image[i]).numpy() for i in range(2)]
    files.append(tf.io.encode_jpeg(big_image[2]).numpy())
    mask_files = [tf.io.encode_png(big_mask[0]).numpy(), b"", tf.io.encode_png(big_mask[2]).numpy()]
    want_bytes = []
    for i, f in enumerate(files):
        img = tf.io.decode_image(f, channels=3)[tf.newaxis]
        msk = (big_mask[i:i + 1] if mask_files[i] else np.full((1, 128, 48, 1), 255, np.uint8))
        want_bytes.append(keras_reference(model, img, msk)["h_full"][0])
    rgbm = preprocess(image, mask)["rgbm"].numpy()
    np.savez(tmp_path / "in.npz", image=image, mask=mask, rgbm=rgbm,
             image_bytes=np.array(files, dtype=object), mask_bytes=np.array(mask_files, dtype=object))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    proc = subprocess.run([sys.executable, "-c", FRESH_PROCESS, str(tmp_path / "in.npz"),
                           str(exported), str(tmp_path / "out.npz")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = np.load(tmp_path / "out.npz")
    for n in (1, 5):
        np.testing.assert_allclose(got[f"default_embedding_{n}"], want["h_full"][:n], atol=1e-5)
        np.testing.assert_allclose(got[f"default_attention_{n}"], want["attention"][:n], atol=1e-5)
    np.testing.assert_allclose(got["bytes_embedding"], np.stack(want_bytes), atol=1e-5)
    np.testing.assert_allclose(got["rgbm_embedding"], want["h_full"], atol=1e-5)


def test_saved_model_cli_lists_predict_signatures(exported):
    proc = subprocess.run(
        [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli", "show",
         "--dir", str(exported), "--all"], capture_output=True, text=True, timeout=120,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = proc.stdout
    assert "MetaGraphDef with tag-set: 'serve'" in text
    for name in export.SIGNATURES:
        block = text.split(f"signature_def['{name}']:")[1].split("signature_def[")[0]
        assert "Method name is: tensorflow/serving/predict" in block
    default = text.split("signature_def['serving_default']:")[1].split("signature_def[")[0]
    assert "inputs['image'] tensor_info:" in default and "dtype: DT_UINT8" in default
    assert "shape: (-1, 160, 64, 3)" in default and "shape: (-1, 160, 64, 1)" in default
    assert "outputs['embedding'] tensor_info:" in default and "shape: (-1, 128)" in default
    assert "outputs['attention'] tensor_info:" in default
    by_bytes = text.split("signature_def['serving_bytes']:")[1].split("signature_def[")[0]
    assert "inputs['image_bytes']" in by_bytes and "dtype: DT_STRING" in by_bytes


def test_tf1_loader_by_tensor_names(runner, model):
    sig = runner.signatures["serving_default"]
    assert sig.method_name == export.PREDICT_METHOD
    assert set(sig.inputs) == {"image", "mask"} and set(sig.outputs) == {"embedding", "attention"}
    image, mask = random_batch(4, seed=3)
    got = runner.run("serving_default", {"image": image, "mask": mask})
    want = keras_reference(model, image, mask)
    np.testing.assert_allclose(got["embedding"], want["h_full"], atol=1e-5)
    np.testing.assert_allclose(got["attention"], want["attention"], atol=1e-5)


def _png(array):
    return tf.io.encode_png(array).numpy()


BAD_INPUTS = {
    "float image": ("serving_default", lambda i, m: {"image": i.astype(np.float32), "mask": m},
                    "expect uint8"),
    "wrong size": ("serving_default", lambda i, m: {"image": i[:, :128], "mask": m},
                   r"must be uint8 \[N, 160, 64, 3\].*got shape \[2 128 64 3\]"),
    "rank 3": ("serving_default", lambda i, m: {"image": i[0], "mask": m[0]},
               r"input image must be uint8 \[N, 160, 64, 3\]"),
    "4 channels": ("serving_default", lambda i, m: {"image": np.concatenate([i, m], -1), "mask": m},
                   r"got shape \[2 160 64 4\]"),
    "empty batch": ("serving_default", lambda i, m: {"image": i[:0], "mask": m[:0]},
                    "empty batch"),
    "batch mismatch": ("serving_default", lambda i, m: {"image": i, "mask": m[:1]},
                       "as many elements"),
    "undecodable": ("serving_bytes", lambda i, m: {
        "image_bytes": np.array([_png(i[0]), b"not an image"], object),
        "mask_bytes": np.array([b"", b""], object)}, r"input image_bytes\[1\] is not a JPEG, PNG"),
    "bad mask bytes": ("serving_bytes", lambda i, m: {
        "image_bytes": np.array([_png(i[0])], object),
        "mask_bytes": np.array([b"GIF"], object)}, r"input mask_bytes\[0\] is not"),
    "empty bytes batch": ("serving_bytes", lambda i, m: {
        "image_bytes": np.array([], object), "mask_bytes": np.array([], object)}, "empty batch"),
    "rgbm wrong shape": ("serving_rgbm", lambda i, m: {"rgbm": np.zeros((1, 160, 64, 3), np.float32)},
                         r"input rgbm must be float32 \[N, 160, 64, 4\]"),
    "rgbm nan": ("serving_rgbm", lambda i, m: {"rgbm": np.full((1, 160, 64, 4), np.nan, np.float32)},
                 "input rgbm holds NaN or Inf"),
    "rgbm inf": ("serving_rgbm", lambda i, m: {
        "rgbm": np.where(np.arange(4) == 3, np.inf, 0.0).astype(np.float32)
        * np.ones((1, 160, 64, 4), np.float32)}, "input rgbm holds NaN or Inf"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_invalid_argument(runner, case):
    signature, feeds, message = BAD_INPUTS[case]
    image, mask = random_batch(2)
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        runner.run(signature, feeds(image, mask))


def test_mscan_export_has_embedding_only(tmp_path):
    import keras

    keras.utils.set_random_seed(1)
    model = models.model_from_config(models.model_config(5, "mscan"))
    target = export.export_saved_model(model, tmp_path / "base")
    loaded = tf.saved_model.load(str(target))
    image, mask = random_batch(2)
    got = loaded.signatures["serving_default"](image=tf.constant(image), mask=tf.constant(mask))
    assert set(got) == {"embedding"}
    np.testing.assert_allclose(got["embedding"].numpy(),
                               keras_reference(model, image, mask)["h_full"], atol=1e-5)
    assert export.read_metadata(target)["attention_output"] is False


def test_flip_average_is_baked_into_the_signatures_and_recorded(tmp_path):
    """The recipe's test-time option: the served embedding is the mean of the image's
    and its mirror's, exactly what mgcam-eval --flip_average computes."""
    import keras

    from mgcam_tf.evaluation.features import extract_features

    keras.utils.set_random_seed(2)
    model = models.model_from_config(models.model_config(5, bnneck=True,
                                                         retrieval_feature="bnneck"))
    target = export.export_saved_model(model, tmp_path / "base", flip_average=True)
    assert export.read_metadata(target)["flip_average"] is True
    loaded = tf.saved_model.load(str(target))
    image, mask = random_batch(3)
    rgbm = preprocess(image, mask)["rgbm"]
    expected = extract_features(model, [{"rgbm": rgbm}], flip_average=True)
    for name, args in (("serving_default", dict(image=tf.constant(image), mask=tf.constant(mask))),
                       ("serving_rgbm", dict(rgbm=rgbm))):
        got = loaded.signatures[name](**args)["embedding"].numpy()
        np.testing.assert_allclose(got, expected, atol=1e-5, err_msg=name)
    plain = extract_features(model, [{"rgbm": rgbm}])
    assert np.abs(plain - expected).max() > 1e-4          # the mirror did change something
    default = export.export_saved_model(model, tmp_path / "plain")
    assert export.read_metadata(default)["flip_average"] is False


def test_a_recipe_network_exports_what_keras_computes(tmp_path):
    """The recipe preset's network (BNNeck, IBN in stages 1 and 2, retrieval on h): its
    instance norm and BNNeck go through the export unchanged."""
    import keras

    keras.utils.set_random_seed(3)
    model = models.model_from_config(models.model_config(
        5, dropout=0.0, bnneck=True, ibn_stages=("stage1", "stage2")))
    target = export.export_saved_model(model, tmp_path / "base")
    loaded = tf.saved_model.load(str(target))
    image, mask = random_batch(3)
    got = loaded.signatures["serving_default"](image=tf.constant(image), mask=tf.constant(mask))
    np.testing.assert_allclose(got["embedding"].numpy(),
                               keras_reference(model, image, mask)["h_full"], atol=1e-5)


def test_model_dir_checkpoint_restores_the_saved_model(model_dir, model):
    # export_model_dir exports what load_trained_model restores.
    restored = run_dir.load_trained_model(model_dir)
    image, mask = random_batch(2)
    np.testing.assert_allclose(keras_reference(restored, image, mask)["h_full"],
                               keras_reference(model, image, mask)["h_full"], atol=1e-5)


def run_cli(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, str(REPO / "tools" / "export.py"), *args],
                          capture_output=True, text=True, env=env, timeout=300)


def test_cli_export_with_calibration_and_errors(model_dir, tmp_path, shared_data):
    out = run_cli(f"--model_dir={model_dir}", f"--export_dir={tmp_path / 'base'}",
                  f"--calibration_data={shared_data / 'market1501_mini'}", "--target_far=0.05")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "serving_default: image uint8" in out.stdout and "verification threshold" in out.stdout
    meta = export.read_metadata(tmp_path / "base")
    cal = meta["verification"]
    assert cal["far"] <= 0.05 and cal["num_negative_pairs"] > 0 and cal["threshold"] > 0
    assert meta["version"] == 1
    # The same version again: refused in one line, the export untouched.
    out = run_cli(f"--model_dir={model_dir}", f"--export_dir={tmp_path / 'base'}", "--version=1")
    assert out.returncode == 1 and out.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "exists already" in out.stderr
