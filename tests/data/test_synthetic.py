"""Tests of the built-in synthetic Market-1501-style data set (mgcam_tf/data/synthetic.py)."""

from __future__ import annotations

import collections
import json
import pathlib
import re

import numpy as np
import pytest
import tensorflow as tf

from mgcam_tf.data import synthetic
from mgcam_tf.data.synthetic import write_synthetic_market
from mgcam_tf.errors import ConfigError, DataError

# Small enough to write in well under a second.
SMALL = dict(num_train_ids=6, num_test_ids=5, num_cameras=3, images_per_camera=3, seed=0)
NAME = re.compile(r"^(-1|\d{4})_c(\d)s(\d)_(\d{6})_(\d{2})\.jpg$")
SPLITS = ("bounding_box_train", "query", "bounding_box_test")


def _records(root: pathlib.Path, split: str) -> list[tuple[str, int, int, int]]:
    """(stem, pid, camera, scene) of every image of a split, parsed as Market-1501 names."""
    out = []
    for path in sorted((root / split).iterdir()):
        match = NAME.match(path.name)
        assert match, f"not a Market-1501 name: {path.name}"
        out.append((path.stem, int(match[1]), int(match[2]), int(match[3])))
    return out


def _image(root: pathlib.Path, split: str, stem: str) -> np.ndarray:
    return tf.io.decode_jpeg(tf.io.read_file(str(root / split / f"{stem}.jpg"))).numpy()


def _mask(root: pathlib.Path, split: str, stem: str) -> np.ndarray:
    return tf.io.decode_png(tf.io.read_file(str(root / f"{split}_seg" / f"{stem}.png"))).numpy()


def _tree(root: pathlib.Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> pathlib.Path:
    return write_synthetic_market(tmp_path_factory.mktemp("syn") / "market", **SMALL)


def test_layout_names_and_masks(small):
    assert {p.name for p in small.iterdir()} == set(SPLITS) | {f"{s}_seg" for s in SPLITS} | {
        "synthetic.json"}
    for split in SPLITS:
        stems = [r[0] for r in _records(small, split)]
        masks = sorted(p.stem for p in (small / f"{split}_seg").iterdir())
        assert stems and masks == stems, split
        assert all(p.suffix == ".png" for p in (small / f"{split}_seg").iterdir())


def test_images_and_masks_have_the_same_size_and_masks_are_binary_bodies(small):
    for split in SPLITS:
        for stem, pid, _, _ in _records(small, split):
            image, mask = _image(small, split, stem), _mask(small, split, stem)
            assert image.shape == (128, 64, 3) and image.dtype == np.uint8
            assert mask.shape == (128, 64, 1) and mask.dtype == np.uint8
            assert set(np.unique(mask)) == {0, 255}, stem
            fraction = np.mean(mask > 0)
            if pid > 0:
                # A whole person: a plausible share of a pedestrian crop.
                assert 0.12 < fraction < 0.6, (stem, fraction)
                rows = np.nonzero(mask[..., 0].any(axis=1))[0]
                assert rows[-1] - rows[0] > 0.6 * 128, stem  # spans most of the height
            else:
                assert 0.005 < fraction < 0.6, (stem, fraction)  # junk, distractors: partial


def test_the_mask_covers_the_body_not_the_background(small):
    # The body differs from the scene behind it: pixels inside the mask of
    # two images of different people in the same scene differ more than
    # the pixels outside both masks.
    recs = [r for r in _records(small, "bounding_box_train")]
    by_scene = collections.defaultdict(list)
    for stem, pid, cam, scene in recs:
        by_scene[(cam, scene)].append((stem, pid))
    inside, outside = [], []
    for group in by_scene.values():
        for (s1, p1), (s2, p2) in zip(group, group[1:]):
            if p1 == p2:
                continue
            a, b = (_image(small, "bounding_box_train", s).astype(float) for s in (s1, s2))
            ma, mb = (_mask(small, "bounding_box_train", s)[..., 0] > 0 for s in (s1, s2))
            diff = np.abs(a - b).mean(-1)
            outside.append(diff[~ma & ~mb].mean())
            inside.append(diff[ma & mb].mean())
    assert len(inside) >= 5
    assert np.median(outside) < 0.5 * np.median(inside)


def test_counts_and_metadata(small):
    meta = json.loads((small / "synthetic.json").read_text())
    assert meta["arguments"] == dict(SMALL, height=128, width=64)
    train, query, gallery = (_records(small, s) for s in SPLITS)
    core = SMALL["num_test_ids"] * SMALL["num_cameras"] * (SMALL["images_per_camera"] - 1)
    assert len(train) == SMALL["num_train_ids"] * SMALL["num_cameras"] * SMALL["images_per_camera"]
    assert len(query) == SMALL["num_test_ids"] * SMALL["num_cameras"]
    assert len(gallery) == core + meta["counts"]["gallery_junk"] + meta["counts"]["gallery_distractors"]
    assert meta["counts"] == {"train": len(train), "query": len(query), "gallery": len(gallery),
                              "gallery_junk": sum(r[1] == -1 for r in gallery),
                              "gallery_distractors": sum(r[1] == 0 for r in gallery)}
    assert meta["counts"]["gallery_junk"] >= 1 and meta["counts"]["gallery_distractors"] >= 1


def test_id_sets(small):
    train, query, gallery = (_records(small, s) for s in SPLITS)
    train_ids = {r[1] for r in train}
    query_ids = {r[1] for r in query}
    gallery_ids = {r[1] for r in gallery if r[1] > 0}
    assert len(train_ids) == SMALL["num_train_ids"] and min(train_ids) > 0
    assert len(query_ids) == SMALL["num_test_ids"] and min(query_ids) > 0
    assert not train_ids & (query_ids | gallery_ids)
    assert query_ids == gallery_ids
    cameras = set(range(1, SMALL["num_cameras"] + 1))
    # One query per test id and camera, each with a gallery match in another camera.
    assert collections.Counter((r[1], r[2]) for r in query) == {
        (pid, cam): 1 for pid in query_ids for cam in cameras}
    gallery_pairs = {(r[1], r[2]) for r in gallery}
    for _, pid, cam, _ in query:
        assert any((pid, other) in gallery_pairs for other in cameras - {cam})
    for _, pid, cam, scene in train + query + gallery:
        assert cam in cameras and 1 <= scene <= 3
    # Every id is seen by every camera in training too.
    assert {(r[1], r[2]) for r in train} == {(p, c) for p in train_ids for c in cameras}
    # File names are unique across the whole data set.
    stems = [r[0] for r in train + query + gallery]
    assert len(stems) == len(set(stems))


def test_the_same_background_recurs_across_different_ids(small):
    recs = _records(small, "bounding_box_train") + _records(small, "bounding_box_test")
    groups = collections.defaultdict(list)
    for stem, pid, cam, scene in recs:
        split = "bounding_box_train" if (small / "bounding_box_train" / f"{stem}.jpg").exists() \
            else "bounding_box_test"
        groups[(cam, scene)].append((split, stem, pid))
    # Each scene is shared by several people.
    assert all(len({g[2] for g in group}) >= 3 for group in groups.values())

    def background_diff(x, y) -> float:
        a, b = (_image(small, s, st).astype(float) for s, st, _ in (x, y))
        keep = (_mask(small, x[0], x[1])[..., 0] == 0) & (_mask(small, y[0], y[1])[..., 0] == 0)
        return float(np.abs(a - b)[keep].mean())

    same, different = [], []
    keys = sorted(groups)
    for i, key in enumerate(keys):
        group = [g for g in groups[key] if g[2] > 0]
        other = groups[keys[(i + 1) % len(keys)]]
        for x, y in zip(group, group[1:]):
            if x[2] != y[2]:
                same.append(background_diff(x, y))
                different.append(background_diff(x, other[0]))
    assert len(same) >= 10
    # Same scene, different person: the background is nearly the same.
    assert np.median(same) < 0.5 * np.median(different)


def test_deterministic(small, tmp_path):
    again = write_synthetic_market(tmp_path / "again", **SMALL)
    assert _tree(again) == _tree(small)
    other = write_synthetic_market(tmp_path / "other", **dict(SMALL, seed=1))
    a, b = _tree(small), _tree(other)
    assert a.keys() != b.keys()
    same_name = [k for k in a.keys() & b.keys() if k.endswith(".jpg")]
    assert all(a[k] != b[k] for k in same_name)


def test_second_call_does_not_rewrite(tmp_path, monkeypatch):
    root = write_synthetic_market(tmp_path / "d", **SMALL)
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}

    def fail(*args, **kwargs):
        raise AssertionError("rewrote a complete data set")

    monkeypatch.setattr(synthetic, "_generate", fail)
    assert write_synthetic_market(str(root), **SMALL) == root
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == before


def test_other_arguments_replace_a_synthetic_data_set(tmp_path):
    root = write_synthetic_market(tmp_path / "d", **SMALL)
    write_synthetic_market(root, **dict(SMALL, num_train_ids=3))
    meta = json.loads((root / "synthetic.json").read_text())
    assert meta["arguments"]["num_train_ids"] == 3
    assert len(list((root / "bounding_box_train").iterdir())) == 3 * 3 * 3
    assert [p.name for p in tmp_path.iterdir()] == ["d"]


def test_interrupted_write_leaves_nothing(tmp_path, monkeypatch):
    real = synthetic._render_chunk
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(synthetic, "_CHUNK", 8)
    monkeypatch.setattr(synthetic, "_render_chunk", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_synthetic_market(tmp_path / "d", **SMALL)
    assert list(tmp_path.iterdir()) == []


def test_stale_temporary_folder_is_cleaned_and_ignored(tmp_path):
    stale = tmp_path / ".d.synthetic-tmp-999999999-abc"
    (stale / "bounding_box_train").mkdir(parents=True)
    (stale / "synthetic.json").write_text("{}")
    root = write_synthetic_market(tmp_path / "d", **SMALL)
    assert [p.name for p in tmp_path.iterdir()] == ["d"]
    assert json.loads((root / "synthetic.json").read_text())["arguments"]["seed"] == 0


def test_a_foreign_folder_is_not_overwritten(tmp_path):
    root = tmp_path / "mine"
    root.mkdir()
    (root / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="mine"):
        write_synthetic_market(root, **SMALL)
    assert (root / "notes.txt").read_text() == "keep me"


def test_an_empty_folder_is_used(tmp_path):
    (tmp_path / "d").mkdir()
    root = write_synthetic_market(tmp_path / "d", **SMALL)
    assert (root / "synthetic.json").is_file()


@pytest.mark.parametrize("bad", [dict(num_cameras=1), dict(num_cameras=10), dict(images_per_camera=1),
                                 dict(num_train_ids=0), dict(seed=-1), dict(height=2.5),
                                 dict(images_per_camera=1001)])
def test_bad_arguments(tmp_path, bad):
    with pytest.raises(ConfigError, match=next(iter(bad))):
        write_synthetic_market(tmp_path / "d", **dict(SMALL, **bad))
    assert not (tmp_path / "d").exists()
