"""The REST and gRPC clients against stand-ins of TF Serving (tests/serving_standins.py)
that run the exported SavedModel by its SignatureDefs on 127.0.0.1."""

import importlib.util
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from mgcam_tf.serving import client as serving_client
from mgcam_tf.data.preprocess import preprocess
from mgcam_tf.errors import ConfigError
from mgcam_tf.serving.client import GrpcClient, RestClient, ServingError

from serving_standins import GrpcStandIn, RestStandIn, shared_export
from harness import REPO

MODEL = "mgcam"
# gRPC needs `pip install --no-deps tensorflow-serving-api==2.21.0` (README, "Two commands for a fresh machine");
# without it the REST half still runs.
HAVE_GRPC = all(importlib.util.find_spec(m) for m in ("grpc", "tensorflow_serving"))
needs_grpc = pytest.mark.skipif(not HAVE_GRPC, reason="tensorflow-serving-api or grpcio "
                                "not installed (pip install --no-deps tensorflow-serving-api)")


@pytest.fixture(scope="module")
def model():
    return shared_export()[0]


@pytest.fixture(scope="module")
def servers():
    export_dir = str(shared_export()[1])
    running = {"rest": RestStandIn(export_dir, MODEL)}
    if HAVE_GRPC:
        running["grpc"] = GrpcStandIn(export_dir, MODEL)
    yield running
    for server in running.values():
        server.stop()


@pytest.fixture(scope="module", params=["rest", pytest.param("grpc", marks=needs_grpc)])
def client(request, servers):
    if request.param == "rest":
        yield RestClient(servers["rest"].url, MODEL, timeout=30, batch_size=2)
    else:
        with GrpcClient(servers["grpc"].target, MODEL, timeout=30, batch_size=2) as c:
            yield c


def batch(n, seed=0, size=(160, 64)):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (n, *size, 3), dtype=np.uint8)
    mask = np.zeros((n, *size, 1), np.uint8)
    mask[:, 10:-10, 8:-8] = 255
    return image, mask


def reference(model, image, mask):
    out = model(preprocess(image, mask)["rgbm"], training=False)
    return out["h_full"].numpy(), out["attention"].numpy()


def test_pixels_match_the_keras_model(client, model):
    image, mask = batch(5)          # 3 requests of batch_size 2
    got = client.predict(image, mask)
    want_h, want_att = reference(model, image, mask)
    np.testing.assert_allclose(got["embedding"], want_h, atol=1e-5)
    np.testing.assert_allclose(got["attention"], want_att, atol=1e-5)


def test_encoded_files_match_the_keras_model(client, model):
    image, mask = batch(3, seed=1, size=(200, 90))
    files = [tf.io.encode_png(image[0]).numpy(), tf.io.encode_jpeg(image[1], quality=95).numpy(),
             tf.io.encode_png(image[2]).numpy()]
    masks = [tf.io.encode_png(mask[0]).numpy(), b"", tf.io.encode_png(mask[2]).numpy()]
    got = client.predict_encoded(files, masks)
    for i, f in enumerate(files):
        decoded = tf.io.decode_image(f, channels=3)[tf.newaxis]
        m = mask[i:i + 1] if masks[i] else np.full((1, 200, 90, 1), 255, np.uint8)
        np.testing.assert_allclose(got["embedding"][i], reference(model, decoded, m)[0][0], atol=1e-5)


@needs_grpc
def test_real_images_by_both_protocols_agree(servers, shared_data):
    folder = shared_data / "market1501_mini" / "query"
    names = sorted(p.name for p in folder.glob("*.jpg"))[:3]
    files = [(folder / n).read_bytes() for n in names]
    masks = [(shared_data / "market1501_mini" / "query_seg" / n.replace(".jpg", ".png")).read_bytes()
             for n in names]
    rest = RestClient(servers["rest"].url, MODEL).predict_encoded(files, masks)
    with GrpcClient(servers["grpc"].target, MODEL) as c:
        grpc = c.predict_encoded(files, masks)
    np.testing.assert_allclose(rest["embedding"], grpc["embedding"], atol=1e-6)


BAD = {
    "float image": ("serving_default", lambda i, m: {"image": i.astype(np.float32), "mask": m},
                    "uint8"),
    "wrong size": ("serving_default", lambda i, m: {"image": i[:, :100], "mask": m},
                   r"must be uint8 \[N, 160, 64, 3\]"),
    "empty batch": ("serving_default", lambda i, m: {"image": i[:0], "mask": m[:0]}, "empty batch"),
    "undecodable": ("serving_bytes", lambda i, m: {
        "image_bytes": np.array([b"\x00garbage"], object), "mask_bytes": np.array([b""], object)},
        r"image_bytes\[0\] is not a JPEG, PNG, BMP or GIF"),
    "missing input": ("serving_default", lambda i, m: {"image": i}, "does not match signature"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_invalid_argument(client, case):
    signature, inputs, message = BAD[case]
    image, mask = batch(2)
    with pytest.raises(ServingError, match=message) as info:
        client.send(signature, inputs(image, mask))
    assert info.value.code == "INVALID_ARGUMENT"


def test_client_side_checks(client):
    image, mask = batch(2)
    with pytest.raises(ConfigError, match=r"uint8 \[N, 160, 64, 3\]"):
        client.predict(image.astype(np.float32), mask)
    with pytest.raises(ConfigError, match="empty batch"):
        client.predict(image[:0], mask[:0])
    with pytest.raises(ConfigError, match="2 images but 1 masks"):
        client.predict_encoded([b"a", b"b"], [b""])


@needs_grpc
def test_unknown_model_and_unreachable_server(servers):
    with pytest.raises(ServingError) as info:
        RestClient(servers["rest"].url, "other").predict(*batch(1))
    assert info.value.code == "NOT_FOUND"
    with GrpcClient(servers["grpc"].target, "other") as c, pytest.raises(ServingError) as info:
        c.predict(*batch(1))
    assert info.value.code == "NOT_FOUND"
    with socket.socket() as s:          # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ServingError, match="cannot reach") as info:
        RestClient(f"127.0.0.1:{port}", MODEL, timeout=5).predict(*batch(1))
    assert info.value.code == "UNAVAILABLE"
    with GrpcClient(f"127.0.0.1:{port}", MODEL, timeout=5) as c, \
            pytest.raises(ServingError, match="cannot reach") as info:
        c.predict(*batch(1))
    assert info.value.code == "UNAVAILABLE"
    with pytest.raises(ConfigError, match="protocol"):
        serving_client.make_client("soap")


@needs_grpc
def test_cli_rest_and_grpc(servers, tmp_path, model):
    image, mask = batch(2, seed=5, size=(150, 60))
    paths = []
    for i in range(2):
        (tmp_path / "imgs").mkdir(exist_ok=True)
        (tmp_path / "imgs_seg").mkdir(exist_ok=True)
        tf.io.write_file(str(tmp_path / "imgs" / f"p{i}.png"), tf.io.encode_png(image[i]))
        tf.io.write_file(str(tmp_path / "imgs_seg" / f"p{i}.png"), tf.io.encode_png(mask[i]))
        paths.append(str(tmp_path / "imgs" / f"p{i}.png"))
    want = reference(model, image, mask)[0]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(REPO))
    script = str(REPO / "tools" / "serving_client.py")
    rest = subprocess.run([sys.executable, script, "--protocol=rest",
                           f"--server={servers['rest'].url}", "--mask_policy=files",
                           f"--output={tmp_path / 'rest.npy'}", *paths],
                          capture_output=True, text=True, env=env, timeout=120)
    assert rest.returncode == 0, rest.stderr[-2000:]
    assert rest.stdout.count("norm") == 2
    np.testing.assert_allclose(np.load(tmp_path / "rest.npy"), want, atol=1e-5)
    bad = subprocess.run([sys.executable, script, "--protocol=grpc",
                          f"--server={servers['grpc'].target}", "--signature=pixels",
                          "--mask_policy=files", "--model_name=nope", *paths],
                         capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines()[-1].startswith("error: NOT_FOUND")
