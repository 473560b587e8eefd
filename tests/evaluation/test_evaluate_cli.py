"""mgcam-eval end to end: from an .npz, and from a model directory on real images."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from mgcam_tf.evaluation import distances, metrics

REPO = pathlib.Path(__file__).resolve().parents[2]


def run_cli(*args, cwd=None):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, str(REPO / "tools" / "evaluate.py"), *args,
                           "--noprogress"], capture_output=True, text=True, env=env,
                          cwd=cwd or REPO, timeout=300)


def make_npz(path, with_train=True, drop=None):
    rng = np.random.default_rng(0)
    ids = 30
    centres = rng.standard_normal((ids + 1, 16)) * 2
    gp = rng.integers(0, ids, 200)
    gp[:10] = -1
    gc = rng.integers(1, 5, 200)
    qp = rng.integers(1, ids, 40)
    qc = rng.integers(1, 5, 40)
    data = {
        "query_features": centres[qp] + rng.standard_normal((40, 16)),
        "query_pids": qp, "query_camids": qc,
        "gallery_features": centres[np.maximum(gp, 0)] + rng.standard_normal((200, 16)),
        "gallery_pids": gp, "gallery_camids": gc,
    }
    if with_train:
        tp = np.repeat(np.arange(20), 6)
        data["train_features"] = rng.standard_normal((21, 16))[tp] + rng.standard_normal((120, 16))
        data["train_pids"] = tp
    if drop:
        del data[drop]
    np.savez(path, **data)
    return data


@pytest.mark.parametrize("metric,ap", [("euclidean", "official"), ("xqda+rerank", "step")])
def test_npz_table_json_and_cmc(tmp_path, metric, ap):
    data = make_npz(tmp_path / "f.npz")
    out = run_cli(f"--features={tmp_path / 'f.npz'}", f"--metric={metric}", f"--ap={ap}",
                  f"--json_out={tmp_path / 'r.json'}", f"--cmc_png={tmp_path / 'cmc.png'}")
    assert out.returncode == 0, out.stderr
    assert "Rank-1" in out.stdout and "mAP" in out.stdout and f"metric={metric}" in out.stdout
    result = json.loads((tmp_path / "r.json").read_text())
    dist = distances.compute_distances(
        data["query_features"], data["gallery_features"], metric,
        train_features=data["train_features"], train_pids=data["train_pids"])
    want = metrics.evaluate(dist, data["query_pids"], data["query_camids"],
                            data["gallery_pids"], data["gallery_camids"], ap=ap)
    for key, value in want.summary().items():
        assert result[key] == pytest.approx(value, abs=1e-9)
        assert 0.0 <= result[key] <= 1.0
    assert result["settings"]["metric"] == metric and result["settings"]["ap"] == ap
    assert result["num_valid"] + result["num_invalid"] == 40
    assert (tmp_path / "cmc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(os.listdir(tmp_path)) == ["cmc.png", "f.npz", "r.json"]  # no temporaries


def test_one_line_errors(tmp_path):
    make_npz(tmp_path / "f.npz", drop="gallery_camids")
    out = run_cli(f"--features={tmp_path / 'f.npz'}", "--metric=euclidean")
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == ["error: --features=" + str(tmp_path / "f.npz")
                                               + ": missing key 'gallery_camids'"]
    make_npz(tmp_path / "g.npz", with_train=False)
    out = run_cli(f"--features={tmp_path / 'g.npz'}")  # default xqda+rerank needs train
    assert out.returncode == 1 and "missing key 'train_features'" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    out = run_cli(f"--features={tmp_path / 'g.npz'}", "--metric=manhattan")
    assert out.returncode == 1 and out.stderr.startswith("error: metric must be one of")
    out = run_cli(f"--features={tmp_path / 'g.npz'}", "--metric=euclidean", "--ap=bogus")
    assert out.returncode == 1 and out.stderr.startswith("error: --ap must be one of")
    out = run_cli("--metric=euclidean")
    assert out.returncode == 1 and "exactly one of" in out.stderr


def test_model_dir_on_real_images(tmp_path, shared_data):
    """An (untrained) MSCAN model directory evaluated on market1501_mini, with every output."""
    import tensorflow as tf

    from mgcam_tf import training

    config = training.ModelConfig(num_ids=16, architecture="mscan")
    model = config.build()
    model(tf.zeros([1, 160, 64, 4]), training=False)
    training.prepare_model_dir(tmp_path / "run", config, {})
    training.checkpoint_manager(tmp_path / "run", model).save()
    out = run_cli(f"--model_dir={tmp_path / 'run'}",
                  f"--data_dir={shared_data / 'market1501_mini'}", "--metric=euclidean",
                  "--batch_size=16", f"--json_out={tmp_path / 'r.json'}",
                  f"--ranked_png={tmp_path / 'ranked.png'}", "--ranked_queries=3",
                  f"--save_features={tmp_path / 'feats.npz'}")
    assert out.returncode == 0, out.stderr
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["num_query"] == 32 and result["settings"]["dataset"] == "market1501"
    feats = np.load(tmp_path / "feats.npz")
    assert feats["query_features"].shape == (32, 128)
    assert feats["gallery_features"].shape == (32, 128)
    # The saved features reproduce the numbers without the network.
    again = run_cli(f"--features={tmp_path / 'feats.npz'}", "--metric=euclidean",
                    f"--json_out={tmp_path / 'r2.json'}", f"--ranked_png={tmp_path / 'r2.png'}")
    assert again.returncode == 0, again.stderr
    result2 = json.loads((tmp_path / "r2.json").read_text())
    assert result2["mAP"] == pytest.approx(result["mAP"], abs=1e-9)
    png = tf.io.decode_png(tf.io.read_file(str(tmp_path / "ranked.png"))).numpy()
    assert png.shape[0] == 3 * (128 + 16) + 4
