"""mgcam-eval end to end: from an .npz, and from a model directory on real images."""

import json
import os

import numpy as np
import pytest

from mgcam_tf.evaluation import distances, metrics
from harness import REPO, run_tool



def run_cli(*args, cwd=None):
    return run_tool("evaluate", *args, "--noprogress", env={"TF_CPP_MIN_LOG_LEVEL": "3"},
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
    out = run_cli(f"--features={tmp_path / 'g.npz'}", "--metric=euclidean",
                  f"--json_out={tmp_path / 'nowhere' / 'r.json'}")
    assert out.returncode == 1 and out.stderr.startswith("error: --json_out=")


@pytest.fixture(scope="module")
def untrained(tmp_path_factory, shared_data):
    """An untrained MSCAN model: a model directory, an export base, and in-process features."""
    import tensorflow as tf

    from mgcam_tf.modeling import models

    from mgcam_tf.training import run_dir
    from mgcam_tf.data import layouts
    from mgcam_tf.evaluation import features

    data_dir = shared_data / "market1501_mini"
    root = tmp_path_factory.mktemp("untrained")
    config = models.model_config(16, "mscan")
    model = models.model_from_config(config)
    model(tf.zeros([1, 160, 64, 4]), training=False)
    run_dir.prepare_model_dir(root / "run", config, {})
    run_dir.checkpoint_manager(root / "run", model).save()

    @tf.function(input_signature=[tf.TensorSpec([None, 160, 64, 4], tf.float32, name="rgbm")])
    def serve_rgbm(rgbm):  # the signature mgcam_tf.serving.export writes as serving_rgbm
        return {"embedding": model(rgbm, training=False)["h_full"]}

    module = tf.Module()
    module.model = model
    tf.saved_model.save(module, str(root / "export" / "3"),
                        signatures={"serving_rgbm": serve_rgbm.get_concrete_function()})
    dataset = layouts.load_dataset(str(data_dir))
    query = features.split_features(model, dataset.query, batch_size=16)
    gallery = features.split_features(model, dataset.gallery, batch_size=16)
    dist = distances.compute_distances(query.features, gallery.features, "euclidean")
    want = metrics.evaluate(dist, query.pids, query.camids, gallery.pids, gallery.camids)
    return {"root": root, "data_dir": data_dir, "mAP": want.mAP, "rank1": want.rank(1)}


def test_saved_model_export_base_on_real_images(untrained):
    root = untrained["root"]
    out = run_cli(f"--saved_model={root / 'export'}", f"--data_dir={untrained['data_dir']}",
                  "--metric=euclidean", f"--json_out={root / 'sm.json'}",
                  f"--ranked_png={root / 'ranked.png'}", "--ranked_queries=3",
                  f"--save_features={root / 'feats.npz'}")
    assert out.returncode == 0, out.stderr
    result = json.loads((root / "sm.json").read_text())
    assert result["num_query"] == 32 and result["settings"]["dataset"] == "market1501"
    assert result["mAP"] == pytest.approx(untrained["mAP"], abs=1e-6)
    assert result["rank1"] == pytest.approx(untrained["rank1"], abs=1e-9)
    feats = np.load(root / "feats.npz")
    assert feats["query_features"].shape == (32, 128)
    assert feats["gallery_features"].shape == (32, 128)
    import tensorflow as tf
    png = tf.io.decode_png(tf.io.read_file(str(root / "ranked.png"))).numpy()
    assert png.shape[0] == 3 * (128 + 16) + 4
    # The saved features reproduce the numbers without the network.
    again = run_cli(f"--features={root / 'feats.npz'}", "--metric=euclidean",
                    f"--json_out={root / 'again.json'}", f"--ranked_png={root / 'r2.png'}")
    assert again.returncode == 0, again.stderr
    assert json.loads((root / "again.json").read_text())["mAP"] == pytest.approx(result["mAP"])
    out = run_cli(f"--saved_model={root}", f"--data_dir={untrained['data_dir']}")
    assert out.returncode == 1 and "no saved_model.pb" in out.stderr.strip().splitlines()[-1]


def test_model_dir_runs_on_real_images(untrained):
    root = untrained["root"]
    out = run_cli(f"--model_dir={root / 'run'}", f"--data_dir={untrained['data_dir']}",
                  "--metric=euclidean", "--batch_size=16", f"--json_out={root / 'md.json'}")
    assert out.returncode == 0, out.stderr
    result = json.loads((root / "md.json").read_text())
    assert result["num_query"] == 32 and 0.0 <= result["mAP"] <= 1.0


def test_model_dir_restores_the_trained_weights(untrained):
    root = untrained["root"]
    if not (root / "md.json").is_file():
        test_model_dir_runs_on_real_images(untrained)
    result = json.loads((root / "md.json").read_text())
    assert result["mAP"] == pytest.approx(untrained["mAP"], abs=1e-6)
