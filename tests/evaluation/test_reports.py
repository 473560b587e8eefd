"""Reports: PNG encoder round trip, table, CMC curve and ranked-list images."""

import os

import numpy as np
import pytest
import tensorflow as tf

from mgcam_tf.errors import ConfigError, DataError, OutputError
from mgcam_tf.evaluation import reports


def decode(path):
    return tf.io.decode_png(tf.io.read_file(str(path))).numpy()


def test_png_round_trip_and_atomic(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (17, 23, 3), dtype=np.uint8)
    path = tmp_path / "x.png"
    reports.write_png(path, image)
    np.testing.assert_array_equal(decode(path), image)
    grey = image[..., 0]
    reports.write_png(path, grey)
    np.testing.assert_array_equal(decode(path)[..., 0], grey)
    assert os.listdir(tmp_path) == ["x.png"]  # no temporary file left
    with pytest.raises(DataError, match="uint8"):
        reports.encode_png(image.astype(np.float32))
    with pytest.raises(OutputError, match="does not exist"):
        reports.write_png(tmp_path / "nope" / "x.png", image)


def test_table():
    text = reports.format_table({"rank1": 0.8355, "rank5": 0.9, "rank10": 0.95, "rank20": 0.97,
                                 "mAP": 0.7425}, {"metric": "xqda+rerank", "ap": "official"},
                                num_valid=3368, num_invalid=2)
    assert "Rank-1" in text and "83.55" in text and "74.25" in text
    assert "metric=xqda+rerank" in text and "2 without a valid match" in text


def test_cmc_curve(tmp_path):
    cmc = np.linspace(0.6, 1.0, 50)
    path = tmp_path / "cmc.png"
    reports.write_cmc_curve(path, {"xqda": cmc, "euclidean": cmc * 0.9})
    image = decode(path)
    assert image.shape == (420, 640, 3)
    colours = {tuple(c) for c in image.reshape(-1, 3)[::7]}
    assert reports.BLUE in colours and reports.RED in colours
    with pytest.raises(ConfigError):
        reports.cmc_curve_image({})


def test_ranked_list(tmp_path):
    paths = []
    for i in range(6):
        img = np.full((40, 20, 3), 30 * i, np.uint8)
        p = tmp_path / f"{i}.jpg"
        tf.io.write_file(str(p), tf.io.encode_jpeg(img))
        paths.append(str(p))
    qp, qc = np.array([1]), np.array([1])
    gp = np.array([1, 2, 1, -1, 1])   # gallery 0 same cam (ignored), 3 junk (ignored)
    gc = np.array([1, 2, 2, 2, 3])
    dist = np.array([[0.0, 0.1, 0.2, 0.05, 0.3]])
    image = reports.ranked_list_image(dist, paths[:1], paths[1:], qp, qc, gp, gc, top_k=3)
    # Shown: gallery 1 (miss), 2 (match), 4 (match).
    y = 14 + 64  # middle row of the tiles, left border column
    cell = 64 + 4
    xs = [2 + 8 + (k + 1) * cell for k in range(3)]
    assert tuple(image[y, 2]) == reports.BLUE
    assert [tuple(image[y, x]) for x in xs] == [reports.RED, reports.GREEN, reports.GREEN]
    out = tmp_path / "ranked.png"
    reports.write_ranked_list(out, dist, paths[:1], paths[1:], qp, qc, gp, gc, top_k=3)
    assert decode(out).shape == image.shape
    with pytest.raises(DataError, match="cannot read"):
        reports.ranked_list_image(dist, [str(tmp_path / "missing.jpg")], paths[1:], qp, qc, gp, gc)
