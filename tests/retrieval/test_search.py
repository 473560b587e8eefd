"""Extraction (resumable, atomic), search, verification and their command lines."""

import json
import os
import pathlib
import shutil

import numpy as np
import pytest
import tensorflow as tf

from mgcam_tf.serving import export
from mgcam_tf.retrieval import extraction
from mgcam_tf.retrieval import search
from mgcam_tf.retrieval import user_images
from mgcam_tf.retrieval import verification
from mgcam_tf.serving.loader import SavedModelEmbedder
from mgcam_tf.errors import ConfigError, DataError

from serving_standins import shared_export
from harness import run_tool



@pytest.fixture(scope="module")
def embedder():
    return SavedModelEmbedder(shared_export()[1].parent)


def fake_segmenter(image):
    """A centred box: stands in for BlazePose, whose model file is fetched with pip."""
    mask = np.zeros(image.shape[:2], np.uint8)
    h, w = mask.shape
    mask[h // 8: -h // 8, w // 4: -w // 4] = 255
    return mask


def write_images(folder: pathlib.Path, n: int, seed: int = 0, names=None):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        name = names[i] if names else f"{i:04d}_c{1 + i % 2}_img.png"
        image = rng.integers(0, 256, (96 + 8 * (i % 3), 48, 3), dtype=np.uint8)
        tf.io.write_file(str(folder / name), tf.io.encode_png(image))
        paths.append(str(folder / name))
    return paths


def test_identity_of_names():
    assert user_images.identity_of("/x/0002_c1s1_000451_03.jpg") == (2, 1)
    assert user_images.identity_of("/x/-1_c3s1_000451_03.jpg") == (-1, 3)
    assert user_images.identity_of("/x/0001_c2_f0046182.jpg") == (1, 2)
    assert user_images.identity_of("/x/0001C1T0001F001.jpg") == (1, 1)
    assert user_images.identity_of("/g/0007/shot_c4.jpg") == (7, 4)
    assert user_images.identity_of("/g/people/holiday.jpg") == (-1, -1)


def test_resolve_masks_policies(tmp_path):
    paths = write_images(tmp_path / "imgs", 3)
    (tmp_path / "imgs_seg").mkdir()
    beside = tmp_path / "imgs_seg" / (pathlib.Path(paths[0]).stem + ".png")
    shutil.copy(paths[0], beside)
    cache = str(tmp_path / "cache")
    auto = user_images.resolve_masks(paths, "auto", cache_dir=cache, segmenter=fake_segmenter)
    assert auto[0] == str(beside) and all(m.startswith(cache) for m in auto[1:])
    written = tf.io.decode_png(tf.io.read_file(auto[1])).numpy()
    assert written.shape[-1] == 1 and set(np.unique(written)) == {0, 255}
    assert user_images.resolve_masks(paths, "full_body") == [str(beside), None, None]
    generated = user_images.resolve_masks(paths, "generate", cache_dir=cache, segmenter=fake_segmenter)
    assert all(m.startswith(cache) for m in generated)
    with pytest.raises(DataError, match="2 image.*no mask beside"):
        user_images.resolve_masks(paths, "files")
    with pytest.raises(DataError, match="mask file not found"):
        user_images.resolve_masks(paths[:1], "auto", given=[str(tmp_path / "nope.png")])
    with pytest.raises(ConfigError, match="mask policy"):
        user_images.resolve_masks(paths, "magic")


def test_extract_resumes_after_a_crash_and_is_atomic(embedder, tmp_path, monkeypatch):
    paths = write_images(tmp_path / "gallery", 7)
    out = tmp_path / "features"
    real = embedder.embed_files
    calls = []

    def crash_on_third_chunk(images, masks, **kwargs):
        calls.append(list(images))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(images, masks, **kwargs)

    monkeypatch.setattr(embedder, "embed_files", crash_on_third_chunk)
    with pytest.raises(KeyboardInterrupt):
        extraction.extract_folder(embedder, str(tmp_path / "gallery"), str(out), chunk_size=3,
                                  segmenter=fake_segmenter)
    assert not extraction.is_feature_folder(str(out))
    assert not (out / extraction.FEATURES_FILE).exists()
    calls.clear()
    monkeypatch.setattr(embedder, "embed_files", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    result = extraction.extract_folder(embedder, str(tmp_path / "gallery"), str(out), chunk_size=3,
                                       segmenter=fake_segmenter)
    assert calls == [paths[6:]]             # only the unfinished chunk again
    assert extraction.is_feature_folder(str(out)) and not (out / extraction.PARTS_DIR).exists()
    loaded = extraction.load_features(str(out))
    assert loaded.paths == tuple(paths) and loaded.features.shape == (7, 128)
    np.testing.assert_array_equal(loaded.features, result.features)
    assert loaded.pids.tolist() == list(range(7)) and loaded.camids.tolist() == [1, 2] * 3 + [1]
    masks = user_images.resolve_masks(paths, "auto", cache_dir=str(out / extraction.MASKS_DIR))
    np.testing.assert_allclose(loaded.features, real(paths, masks), atol=1e-6)
    # Finished: a third run embeds nothing.
    calls.clear()
    extraction.extract_folder(embedder, str(tmp_path / "gallery"), str(out), chunk_size=3,
                              segmenter=fake_segmenter)
    assert calls == [] and not (out / extraction.PARTS_DIR).exists()


def test_embedder_names_a_bad_file(embedder, tmp_path):
    good = write_images(tmp_path / "imgs", 1)[0]
    bad = tmp_path / "imgs" / "broken.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(DataError, match="broken.png"):
        embedder.embed_files([good, str(bad)], [None, None])


def test_rank_gallery_and_sheets(tmp_path):
    rng = np.random.default_rng(0)
    gallery_features = rng.normal(size=(20, 8)).astype(np.float32)
    query = gallery_features[[3, 11]] + 0.01
    order, dist = search.rank_gallery(query, gallery_features, top_k=5)
    assert order[:, 0].tolist() == [3, 11] and order.shape == (2, 5)
    brute = np.linalg.norm(query[:, None] - gallery_features[None], axis=-1)
    np.testing.assert_allclose(dist, np.sort(brute, 1)[:, :5], atol=1e-5)
    paths = write_images(tmp_path / "g", 20)
    gallery = extraction.FeatureSet(gallery_features, tuple(paths), np.arange(20), np.zeros(20),
                                    ("",) * 20)
    results = search.search(query, gallery, top_k=4)
    assert [m.rank for m in results[0]] == [1, 2, 3, 4] and results[1][0].path == paths[11]
    search.write_sheet(str(tmp_path / "s.html"), paths[:2], results)
    page = (tmp_path / "s.html").read_text()
    # Self-contained: thumbnails inline (tests/retrieval/test_sheets.py has the rest).
    assert page.count("<img") == 10 and page.count('src="data:image/jpeg;base64,') == 10
    search.write_sheet(str(tmp_path / "s.png"), paths[:2], results)
    sheet = tf.io.decode_png(tf.io.read_file(str(tmp_path / "s.png"))).numpy()
    assert sheet.shape[0] > 2 * 128 and sheet.shape[1] > 5 * 64
    with pytest.raises(ConfigError, match=".html or .png"):
        search.write_sheet(str(tmp_path / "s.gif"), paths[:2], results)


def test_calibration_meets_its_false_accept_rate():
    rng = np.random.default_rng(0)
    pids = np.repeat(np.arange(1, 41), 5)
    features = rng.normal(size=(40, 16))[pids - 1] * 3 + rng.normal(size=(200, 16))
    cal = verification.calibrate(features, pids, target_far=0.01)
    positive, negative = verification.pair_distances(features, pids)
    assert np.mean(negative < cal.threshold) == pytest.approx(cal.far) and cal.far <= 0.01
    assert cal.tar == pytest.approx(np.mean(positive < cal.threshold)) and cal.tar > 0.5
    assert cal.num_positive_pairs == 40 * 10 and cal.num_ids == 40
    assert verification.Calibration.from_json(cal.to_json()) == cal
    with pytest.raises(DataError, match="two ids"):
        verification.calibrate(features[:5], pids[:5])
    with pytest.raises(ConfigError, match="target_far"):
        verification.calibrate(features, pids, target_far=1.5)


def test_cli_extract_search_verify(shared_data, tmp_path, embedder):
    market = shared_data / "market1501_mini"
    feats = tmp_path / "feats"
    out = run_tool("extract", f"--saved_model={embedder.export_dir}",
                   f"--image_dir={market / 'bounding_box_test'}", f"--output_dir={feats}",
                   "--mask_policy=files", "--noprogress")
    assert out.returncode == 0, out.stderr[-3000:]
    gallery = extraction.load_features(str(feats))
    assert len(gallery) == 32 and all(m.endswith(".png") for m in gallery.masks)
    queries = sorted(str(p) for p in (market / "query").glob("*.jpg"))[:2]
    out = run_tool("search", f"--saved_model={embedder.export_dir}", f"--gallery={feats}",
                   "--top_k=3", "--mask_policy=files", f"--sheet={tmp_path / 'sheet.png'}",
                   f"--json_out={tmp_path / 'r.json'}", *queries)
    assert out.returncode == 0, out.stderr[-3000:]
    ranked = json.loads((tmp_path / "r.json").read_text())["queries"]
    assert [len(q["matches"]) for q in ranked] == [3, 3] and (tmp_path / "sheet.png").is_file()
    qmasks = user_images.resolve_masks(queries, "files")
    want = search.search(embedder.embed_files(queries, qmasks), gallery, 3)
    assert [m["index"] for m in ranked[0]["matches"]] == [m.index for m in want[0]]
    assert f"  1  {want[0][0].distance:8.4f}  {want[0][0].path}" in out.stdout

    # Verification with a threshold stored beside a copy of the export.
    calibrated = tmp_path / "export"
    shutil.copytree(embedder.export_dir, calibrated / "1")
    a, b = queries
    dist = verification.distance(*embedder.embed_files([a, b], qmasks))
    cal = verification.Calibration(threshold=dist + 1.0, target_far=0.01, far=0.008, tar=0.9,
                                   num_positive_pairs=10, num_negative_pairs=90, num_images=20,
                                   num_ids=5, source="test")
    export.write_metadata(calibrated, {verification.METADATA_KEY: cal.to_json()})
    out = run_tool("verify", f"--saved_model={calibrated}", "--mask_policy=files", "--json", a, b)
    assert out.returncode == 0, out.stderr[-3000:]
    answer = json.loads(out.stdout.strip().splitlines()[-1])
    assert answer["same_person"] is True and answer["distance"] == pytest.approx(dist, abs=1e-4)
    out = run_tool("verify", f"--saved_model={embedder.export_dir}", "--mask_policy=files", a, b)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "holds no calibrated threshold" in out.stderr


def _blazepose_available() -> bool:
    from mgcam_tf.segmentation import model_file

    return bool(os.environ.get(model_file.ENV_MODEL)) or (
        model_file.default_cache_dir() / model_file.MODEL_FILENAME).is_file()


@pytest.mark.skipif(not _blazepose_available(),
                    reason="BlazePose model not cached (mgcam_tf.segmentation.model_file.fetch_model fetches it)")
def test_generated_masks_match_the_shared_ones(shared_data, tmp_path):
    folder = shared_data / "market1501_mini" / "query"
    images = sorted(str(p) for p in folder.glob("*.jpg"))[:3]
    made = user_images.resolve_masks(images, "generate", cache_dir=str(tmp_path))
    for image, mask in zip(images, made):
        ours = tf.io.decode_png(tf.io.read_file(mask)).numpy()[..., 0] > 127
        shared = folder.parent / "query_seg" / (pathlib.Path(image).stem + ".png")
        theirs = tf.io.decode_png(tf.io.read_file(str(shared))).numpy()[..., 0] > 127
        assert (ours & theirs).sum() / max((ours | theirs).sum(), 1) > 0.9
