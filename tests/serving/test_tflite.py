"""TFLite (float32, float16, int8) and ONNX files of the embedding against the SavedModel,
mgcam-export --format=tflite|onnx, and its one-line errors.

Tolerances, on an untrained MGCAM whose BatchNorm statistics are perturbed
(`serving_standins.shared_export`): float32 max |difference| 1e-5 (float
rounding only); float16 per-embedding relative error ||tflite - ref|| /
||ref|| <= 1e-2 (the weights are rounded to 11 significant bits); int8
relative error <= 0.1 and the same nearest neighbour (its noisy copy) for
each of a few real crops (what retrieval needs; the figures on the trained preset
are benchmarks/bench_tflite.py's, docs/PERFORMANCE.md).
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from mgcam_tf.data import layouts, pipeline
from mgcam_tf.data.preprocess import preprocess
from mgcam_tf.errors import ConfigError
from mgcam_tf.modeling import models
from mgcam_tf.serving import export, limits, tflite
from mgcam_tf.training import run_dir

from serving_standins import shared_export
from harness import REPO



@pytest.fixture(scope="module")
def model():
    return shared_export()[0]


@pytest.fixture(scope="module")
def savedmodel_embed():
    serving = tf.saved_model.load(str(shared_export()[1])).signatures[export.SIGNATURE_RGBM]
    return lambda rgbm: serving(rgbm=tf.constant(rgbm))[export.OUTPUT_EMBEDDING].numpy()


@pytest.fixture(scope="module")
def random_rgbm():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (5, 160, 64, 3), dtype=np.uint8)
    mask = np.zeros((5, 160, 64, 1), np.uint8)
    mask[:, 20:140, 16:48] = 255
    return preprocess(image, mask)["rgbm"].numpy()


@pytest.fixture(scope="module")
def cuhk03(shared_data):
    return layouts.load_dataset(str(shared_data / "cuhk03_pair1"))


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    return float((np.linalg.norm(got - want, axis=1) / np.linalg.norm(want, axis=1)).max())


def nearest_neighbours(feats: np.ndarray) -> np.ndarray:
    d = np.linalg.norm(feats[:, None] - feats[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    return d.argmin(axis=1)


def test_float32_matches_savedmodel_and_keras(model, savedmodel_embed, random_rgbm):
    embedder = tflite.TFLiteEmbedder(tflite.convert_tflite(model, "float32"))
    got = embedder(random_rgbm)
    assert got.dtype == np.float32 and got.shape == (5, 128)
    np.testing.assert_allclose(got, savedmodel_embed(random_rgbm), atol=1e-5)
    np.testing.assert_allclose(got, model.embed(random_rgbm).numpy(), atol=1e-5)
    # The batch dimension is variable: a batch of 1 after one of 5, and back.
    np.testing.assert_allclose(embedder(random_rgbm[:1]), got[:1], atol=1e-5)
    np.testing.assert_allclose(embedder(random_rgbm), got, atol=1e-5)
    # The interface: float32 in and out, whatever the quantisation.
    inp = embedder.interpreter.get_input_details()[0]
    assert inp["dtype"] == np.float32 and list(inp["shape_signature"]) == [-1, 160, 64, 4]


def test_float16_within_one_percent(model, savedmodel_embed, random_rgbm):
    data16 = tflite.convert_tflite(model, "float16")
    got = tflite.TFLiteEmbedder(data16)(random_rgbm)
    assert relative_error(got, savedmodel_embed(random_rgbm)) <= 1e-2
    # Half the weights' bytes.
    assert len(data16) < 0.6 * len(tflite.convert_tflite(model, "float32"))


def test_int8_close_and_rank_preserving_on_real_crops(model, savedmodel_embed, cuhk03):
    representative = tflite.representative_rgbm(cuhk03.train, 20)
    data8 = tflite.convert_tflite(model, "int8", representative)
    embedder = tflite.TFLiteEmbedder(data8)
    details = embedder.interpreter.get_input_details()[0]
    assert details["dtype"] == np.float32   # float32 interface kept
    assert embedder.interpreter.get_output_details()[0]["dtype"] == np.float32
    # The weights are int8: the tensors of the file are mostly int8.
    types = [t["dtype"] for t in embedder.interpreter.get_tensor_details()]
    assert types.count(np.int8) > types.count(np.float32)
    crops = next(iter(pipeline.eval_dataset(tflite.spread_subset(cuhk03.query, 6), 6)))
    # Each crop and a slightly noisy copy: an untrained model's distances
    # between different people are near-ties, but a copy must stay the
    # nearest neighbour of its original under int8 as it is in float32.
    rgbm = crops["rgbm"].numpy()
    noisy = rgbm + np.random.default_rng(0).normal(0, 0.02, rgbm.shape).astype(np.float32)
    # Kept within what preprocess can give: serving_rgbm refuses anything else.
    noisy = np.clip(noisy, limits.RGBM_LOW, limits.RGBM_HIGH).astype(np.float32)
    rgbm = np.concatenate([rgbm, noisy])
    got, want = embedder(rgbm), savedmodel_embed(rgbm)
    assert relative_error(got, want) <= 0.1
    pairs = np.r_[6:12, 0:6]
    np.testing.assert_array_equal(nearest_neighbours(want), pairs)
    np.testing.assert_array_equal(nearest_neighbours(got), pairs)


def test_int8_without_data_and_bad_names_refused(model):
    with pytest.raises(ConfigError, match="int8 needs a representative data set"):
        tflite.convert_tflite(model, "int8")
    with pytest.raises(ConfigError, match=r"--tflite_quantization=int4: must be one of"):
        tflite.convert_tflite(model, "int4")
    with pytest.raises(ConfigError, match=r"--format=coreml: must be one of"):
        tflite.check_format("coreml")


def test_write_tflite_is_atomic_and_embedder_checks_input(model, tmp_path, random_rgbm):
    path = tflite.write_tflite(model, tmp_path / "deep" / "m.tflite")
    assert sorted(p.name for p in path.parent.iterdir()) == ["m.tflite"]   # no temporary left
    with pytest.raises(ConfigError, match=r"rgbm must be float32 \[N >= 1, 160, 64, 4\]"):
        tflite.TFLiteEmbedder(path)(random_rgbm[..., :3])
    with pytest.raises(ConfigError, match="TFLite file not found"):
        tflite.TFLiteEmbedder(tmp_path / "missing.tflite")


def test_onnx_matches_savedmodel(model, savedmodel_embed, random_rgbm, tmp_path):
    pytest.importorskip("tf2onnx", reason="tf2onnx not installed (pip install tf2onnx)")
    ort = pytest.importorskip("onnxruntime")
    path = tflite.write_onnx(model, tmp_path / "m.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    assert inp.name == "rgbm" and inp.type == "tensor(float)"
    got = session.run(None, {inp.name: random_rgbm})[0]
    np.testing.assert_allclose(got, savedmodel_embed(random_rgbm), atol=1e-5)


def test_onnx_without_tf2onnx_is_one_clear_error(model, monkeypatch):
    monkeypatch.setitem(sys.modules, "tf2onnx", None)   # import fails as if not installed
    with pytest.raises(ConfigError, match="--format=onnx needs tf2onnx.*pip install tf2onnx"):
        tflite.convert_onnx(model)


# ==================================================================================
# mgcam-export --format=...

@pytest.fixture(scope="module")
def model_dir(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("run")
    run_dir.prepare_model_dir(path, models.model_config(5), {})
    run_dir.checkpoint_manager(path, model).save()
    return path


def run_cli(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, str(REPO / "tools" / "export.py"), *args],
                          capture_output=True, text=True, env=env, timeout=300)


def test_cli_format_tflite(model_dir, model, tmp_path, random_rgbm):
    out = run_cli(f"--model_dir={model_dir}", f"--export_dir={tmp_path / 'lite'}",
                  "--format=tflite", "--tflite_quantization=float16")
    assert out.returncode == 0, out.stderr[-3000:]
    path = tmp_path / "lite" / "mgcam_rgbm_float16.tflite"
    assert f"to {path}" in out.stdout and "-> embedding float32 [-1, 128]" in out.stdout
    info = json.loads((tmp_path / "lite" / "mgcam_rgbm_float16.tflite.json").read_text())
    assert info["tflite_quantization"] == "float16" and info["model"]["config"]["num_ids"] == 5
    got = tflite.TFLiteEmbedder(path)(random_rgbm)
    assert relative_error(got, model.embed(random_rgbm).numpy()) <= 1e-2


@pytest.mark.parametrize("args, message", [
    (["--format=tflite", "--tflite_quantization=int4"],
     "error: --tflite_quantization=int4: must be one of float32, float16, int8"),
    (["--format=tflite", "--tflite_quantization=int8"],
     "error: --tflite_quantization=int8 needs --representative_data"),
    (["--format=tflite", "--version=3"], "error: --version applies to --format=saved_model only"),
    (["--format=pb"], "error: --format=pb: must be one of saved_model, tflite, onnx"),
])
def test_cli_bad_format_flags_one_line(model_dir, tmp_path, args, message):
    out = run_cli(f"--model_dir={model_dir}", f"--export_dir={tmp_path / 'x'}", *args)
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), out.stderr[-2000:]
    assert not (tmp_path / "x").exists()
