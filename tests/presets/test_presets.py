"""The shipped presets: each loads, embeds, states its provenance, and reaches the
figures its preset.json gives on the data it names."""

import json
import pathlib

import numpy as np
import pytest

import mgcam_tf
from mgcam_tf import presets
from mgcam_tf.errors import ConfigError

NAME = "mgcam_siamese_cuhk03"      # the paper's recipe
RECIPE = "mgcam_recipe_cuhk03"     # the modern recipe on all 743 ids (issue 22)
NAMES = (NAME, RECIPE)


def test_both_presets_ship():
    assert set(NAMES) <= set(presets.list_presets())


@pytest.mark.parametrize("name", NAMES)
def test_preset_is_shipped_small_and_documented(name):
    folder = presets.preset_dir(name)
    size = sum(p.stat().st_size for p in pathlib.Path(folder).rglob("*") if p.is_file())
    assert size < 8 * 2**20, size
    info = presets.preset_info(name)
    assert "research" in info["terms"] and "CUHK03" in info["terms"]
    assert info["trained_with"] and info["commit"]
    assert {"euclidean/single_query", "euclidean/all_queries"} <= set(info["evaluation"])


def test_recipe_preset_says_its_recipe_and_that_its_figures_are_in_sample():
    info = presets.preset_info(RECIPE)
    assert "batch-hard" in info["recipe"] and "cuhk03_pair1_recipe_preset" in info["recipe"]
    assert info["note"].startswith("In-sample")
    assert "743" in info["terms"] and "hand-drawn" in info["terms"]
    assert info["model"]["config"]["num_ids"] == 743
    assert info["model"]["config"]["bnneck"] is True


@pytest.mark.parametrize("name", NAMES)
def test_load_preset_embeds(name):
    model = mgcam_tf.load_preset(name)
    assert type(model).__name__ == "MGCAM"
    rgbm = np.random.RandomState(0).randn(3, 160, 64, 4).astype("float32")
    h = model.embed(rgbm).numpy()
    assert h.shape == (3, 128) and np.all(np.isfinite(h))


def test_unknown_preset_names_the_known_ones():
    with pytest.raises(ConfigError, match=NAME):
        presets.preset_dir("no_such_preset")


@pytest.mark.parametrize("name", NAMES)
def test_preset_reaches_its_stated_figures(shared_data, name):
    from mgcam_tf.data import layouts
    from mgcam_tf.evaluation import evaluator, features

    info = presets.preset_info(name)
    dataset = layouts.load_dataset(str(shared_data / "cuhk03_pair1"))
    model = presets.load_preset(name)
    query = features.split_features(model, dataset.query, batch_size=128)
    gallery = features.split_features(model, dataset.gallery, batch_size=128)
    for protocol in ("single_query", "all_queries"):
        result = evaluator.ReidEvaluator("euclidean", protocol=protocol).evaluate(
            query, gallery).result
        want = info["evaluation"][f"euclidean/{protocol}"]
        assert result.rank(1) == pytest.approx(want["rank1"], abs=2e-3), protocol
        assert result.mAP == pytest.approx(want["mAP"], abs=2e-3), protocol
    assert json.loads(json.dumps(info))  # plain JSON


def test_preset_export_follows_the_segmenter_choice(tmp_path, monkeypatch):
    """$MGCAM_SEGMENTER (or segmenter=) picks the image-only signatures' mask network of
    the preset's cached export, and each choice has its own cache folder."""
    from mgcam_tf.segmentation import distilled
    from mgcam_tf.serving import export

    calls = []

    def fake_export(folder, export_base, **args):
        calls.append((pathlib.Path(export_base), args))
        return pathlib.Path(export_base) / "1"

    monkeypatch.setenv("MGCAM_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(export, "export_model_dir", fake_export)
    monkeypatch.setenv("MGCAM_SEGMENTER", "distilled")
    presets.export_preset(NAME)
    monkeypatch.delenv("MGCAM_SEGMENTER")
    presets.export_preset(NAME, segmenter="distilled")
    presets.export_preset(NAME, segmenter="blazepose", mask_model_path=None)
    (base_env, args_env), (base_arg, args_arg), (base_blaze, args_blaze) = calls
    assert args_env["segmenter"] == args_arg["segmenter"] == "distilled"
    assert args_env["mask_model_path"] == distilled.shipped_weights_path()
    assert base_env == base_arg != base_blaze and args_blaze["segmenter"] == "blazepose"
