"""Readers of every layout, on the real data in ../shared/data and on small
folders built in tmp_path, and their errors for bad input."""

import logging
import os
import pathlib
import sys
import types

import numpy as np
import pytest
import scipy.io

from mgcam_tf.data.layouts import ReidDataset, Split, detect_layout, load_dataset
from mgcam_tf.errors import DataError

# 1x1 JPEG / PNG bytes are enough for the readers (they never decode).
_JPEG = b"\xff\xd8\xff\xe0 fake jpeg \xff\xd9"
_PNG = b"\x89PNG fake png IEND"


def _touch(path: pathlib.Path, data: bytes = _JPEG) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _market_like(root: pathlib.Path, names: dict, masks: bool = True) -> None:
    for folder, files in names.items():
        for name in files:
            _touch(root / folder / name)
            if masks:
                _touch(root / (folder + "_seg") / (os.path.splitext(name)[0] + ".png"), _PNG)


_MARKET_NAMES = {
    "bounding_box_train": ["0002_c1s1_000451_03.jpg", "0002_c2s1_000301_01.jpg",
                           "0007_c3s1_000551_01.jpg"],
    "query": ["0001_c1s1_001051_00.jpg", "0003_c2s1_000476_00.jpg"],
    "bounding_box_test": ["-1_c1s1_000401_03.jpg", "0000_c1s1_000151_01.jpg",
                          "0001_c2s1_000301_01.jpg", "0001_c1s1_000551_02.jpg",
                          "0003_c3s1_000476_01.jpg"],
}


# ---------------------------------------------------------------- real data

def test_market1501_mini(shared_data):
    ds = load_dataset(shared_data / "market1501_mini")
    assert isinstance(ds, ReidDataset) and ds.name == "market1501"
    assert (len(ds.train), len(ds.query), len(ds.gallery)) == (32, 32, 32)
    assert ds.num_train_ids == 16
    assert sorted(set(ds.train.pids.tolist())) == list(range(16))
    assert ds.train.pids.dtype == np.int64 and ds.train.camids.dtype == np.int64
    assert set(ds.query.camids.tolist()) <= set(range(1, 7))
    # Query keeps the original ids (0004 ... ), in file order.
    assert ds.query.pids[0] == 4 and ds.query.camids[0] == 2
    assert ds.query.image_paths[0].endswith("query/0004_c2s3_059152_00.jpg")
    assert ds.query.mask_paths[0].endswith("query_seg/0004_c2s3_059152_00.png")
    assert all(os.path.isfile(m) for m in ds.gallery.mask_paths)
    assert ds.train.tracklets is None


def test_cuhk03_pair1(shared_data):
    ds = load_dataset(shared_data / "cuhk03_pair1")
    assert (len(ds.train), len(ds.query), len(ds.gallery)) == (6264, 200, 775)
    assert ds.num_train_ids == 643
    assert set(ds.gallery.camids.tolist()) == {1, 2}
    assert not set(ds.train.image_paths) & set(ds.gallery.image_paths)


def test_mars_mini_without_info_uses_first_tracklet_rule(shared_data):
    ds = load_dataset(shared_data / "mars_mini")
    assert ds.name == "mars"
    assert len(ds.train) == 853 and len(ds.query) + len(ds.gallery) == 1916
    assert ds.num_train_ids == 16
    assert ds.train.mask_paths[0].endswith(
        os.path.join("bbox_train_seg", "0003", "0003C4T0003F002.png"))
    assert ds.query.tracklets is not None and ds.gallery.tracklets is not None
    # Query and gallery tracklets are disjoint; one query tracklet per (id, cam).
    assert not set(ds.query.tracklets.tolist()) & set(ds.gallery.tracklets.tolist())
    keys = {(p, c, t) for p, c, t in zip(ds.query.pids, ds.query.camids, ds.query.tracklets)}
    assert len(keys) == len({(p, c) for p, c, _ in keys})
    # Every frame of a tracklet shares its id and camera.
    for split in (ds.query, ds.gallery, ds.train):
        for t in np.unique(split.tracklets):
            sel = split.tracklets == t
            assert len(set(split.pids[sel])) == 1 and len(set(split.camids[sel])) == 1


# ------------------------------------------------------------ built layouts

def test_market_junk_and_distractors_kept_in_gallery_only(tmp_path):
    _market_like(tmp_path, _MARKET_NAMES)
    ds = load_dataset(tmp_path)
    assert ds.name == "market1501" and detect_layout(str(tmp_path)) == "market1501"
    assert ds.num_train_ids == 2 and ds.train.pids.tolist() == [0, 0, 1]
    assert sorted(ds.gallery.pids.tolist()) == [-1, 0, 1, 1, 3]
    assert ds.query.pids.tolist() == [1, 3]


def test_market_junk_in_train_is_excluded(tmp_path):
    names = dict(_MARKET_NAMES)
    names["bounding_box_train"] = names["bounding_box_train"] + ["-1_c1s1_000001_01.jpg",
                                                                 "0000_c1s1_000002_01.jpg"]
    _market_like(tmp_path, names)
    ds = load_dataset(tmp_path)
    assert len(ds.train) == 3 and ds.num_train_ids == 2


def test_duke(tmp_path):
    _market_like(tmp_path, {
        "bounding_box_train": ["0001_c2_f0046182.jpg", "0005_c1_f0000001.jpg"],
        "query": ["0010_c1_f0000100.jpg"],
        "bounding_box_test": ["0010_c2_f0000200.jpg", "0011_c3_f0000300.jpg"]})
    ds = load_dataset(tmp_path)
    assert ds.name == "dukemtmc"
    assert ds.train.camids.tolist() == [2, 1] and ds.num_train_ids == 2
    assert ds.gallery.pids.tolist() == [10, 11]


def _cuhk03_np(root):
    names = {"bounding_box_train": ["0001_c1_1.png", "0001_c2_2.png", "0002_c1_3.png"],
             "query": ["0003_c1_4.png"],
             "bounding_box_test": ["0003_c2_5.png", "0004_c2_6.png"]}
    for sub in ("labeled", "detected"):
        for folder, files in names.items():
            for name in files:
                _touch(root / sub / folder / name, _PNG)
                _touch(root / sub / (folder + "_seg") / name, _PNG)


def test_cuhk03_np_labeled_and_detected(tmp_path):
    _cuhk03_np(tmp_path)
    with pytest.raises(DataError, match="cuhk03_labeled"):
        load_dataset(tmp_path)
    labeled = load_dataset(tmp_path, layout="cuhk03_labeled")
    detected = load_dataset(tmp_path, layout="cuhk03_detected")
    assert labeled.name == "cuhk03_labeled" and detected.name == "cuhk03_detected"
    assert labeled.num_train_ids == 2 and len(detected.gallery) == 2
    assert "labeled" in labeled.train.image_paths[0]
    # Image and mask are both NAME.png, in X/ and X_seg/.
    assert labeled.train.mask_paths[0].endswith(
        os.path.join("bounding_box_train_seg", "0001_c1_1.png"))
    # A subfolder is itself a Market-layout data set.
    sub = load_dataset(tmp_path / "detected")
    assert sub.name == "cuhk03" and len(sub.train) == 3


def _mars(root, with_info):
    frames = {
        "bbox_train": ["0001C1T0001F001.jpg", "0001C1T0001F002.jpg", "0002C2T0001F001.jpg"],
        "bbox_test": ["0003C1T0001F001.jpg", "0003C1T0001F002.jpg", "0003C2T0002F001.jpg",
                      "0003C1T0003F001.jpg", "0004C3T0001F001.jpg", "0004C4T0001F001.jpg",
                      "00-1C1T0001F001.jpg", "0000C2T0001F001.jpg"],
    }
    for folder, names in frames.items():
        for name in names:
            _touch(root / folder / name[:4] / name)
            _touch(root / (folder + "_seg") / name[:4] / (name[:-4] + ".png"), _PNG)
    if with_info:
        # Sorted bbox_test order: 0000, 0003 (x4), 0004 (x2), 00-1 folder.
        test_names = sorted(
            (n for n in frames["bbox_test"]), key=lambda n: (n[:4], n))
        (root / "info").mkdir()
        (root / "info" / "test_name.txt").write_text("\n".join(test_names) + "\n")
        idx = {n: i + 1 for i, n in enumerate(test_names)}
        tracks = [[idx["0000C2T0001F001.jpg"]] * 2 + [0, 2],
                  [idx["0003C1T0001F001.jpg"], idx["0003C1T0001F002.jpg"], 3, 1],
                  [idx["0003C1T0003F001.jpg"]] * 2 + [3, 1],
                  [idx["0003C2T0002F001.jpg"]] * 2 + [3, 2],
                  [idx["0004C3T0001F001.jpg"]] * 2 + [4, 3],
                  [idx["0004C4T0001F001.jpg"]] * 2 + [4, 4],
                  [idx["00-1C1T0001F001.jpg"]] * 2 + [-1, 1]]
        scipy.io.savemat(root / "info" / "tracks_test_info.mat",
                         {"track_test_info": np.asarray(tracks, np.float64)})
        scipy.io.savemat(root / "info" / "query_IDX.mat",
                         {"query_IDX": np.asarray([[4, 5]], np.float64)})
    return frames


def test_mars_with_info_mat(tmp_path):
    _mars(tmp_path, with_info=True)
    ds = load_dataset(tmp_path)
    assert ds.name == "mars" and ds.num_train_ids == 2
    names = lambda split: [os.path.basename(p) for p in split.image_paths]  # noqa: E731
    # query_IDX picks tracklets 4 (0003, cam 2) and 5 (0004, cam 3), 1-based.
    assert names(ds.query) == ["0003C2T0002F001.jpg", "0004C3T0001F001.jpg"]
    assert ds.query.tracklets.tolist() == [3, 4]
    assert len(ds.gallery) == 6 and sorted(set(ds.gallery.pids.tolist())) == [-1, 0, 3, 4]
    assert ds.gallery.tracklets[names(ds.gallery).index("0003C1T0001F002.jpg")] == 1


def test_mars_without_info_rule(tmp_path):
    _mars(tmp_path, with_info=False)
    ds = load_dataset(tmp_path)
    names = sorted(os.path.basename(p) for p in ds.query.image_paths)
    # Per (id, camera) the lowest tracklet number; junk/distractors never.
    assert names == ["0003C1T0001F001.jpg", "0003C1T0001F002.jpg", "0003C2T0002F001.jpg",
                     "0004C3T0001F001.jpg", "0004C4T0001F001.jpg"]
    assert sorted(os.path.basename(p) for p in ds.gallery.image_paths) == [
        "00-1C1T0001F001.jpg", "0000C2T0001F001.jpg", "0003C1T0003F001.jpg"]
    assert -1 in ds.gallery.pids and 0 in ds.gallery.pids


def test_folder_per_identity(tmp_path):
    for split, files in {"train": ["alice/a_c1.jpg", "alice/b_c2.jpg", "bob/x.jpg"],
                         "query": ["carol/q.jpg"],
                         "gallery": ["carol/g1_c3.jpg", "dave/g2.jpg"]}.items():
        for f in files:
            _touch(tmp_path / split / f)
            _touch(tmp_path / (split + "_seg") / (f[:-4] + ".png"), _PNG)
    ds = load_dataset(tmp_path)
    assert ds.name == "folders" and ds.num_train_ids == 2
    assert ds.train.pids.tolist() == [0, 0, 1]
    assert ds.train.camids.tolist() == [1, 2, 0]
    # Names map to shared ids; query camera 0 and gallery camera 1 by default.
    assert ds.query.pids[0] == ds.gallery.pids[0]
    assert ds.query.camids.tolist() == [0] and ds.gallery.camids.tolist() == [3, 1]
    assert ds.train.mask_paths[0].endswith(os.path.join("train_seg", "alice", "a_c1.png"))


def test_manifest(tmp_path):
    _touch(tmp_path / "img" / "a.jpg")
    _touch(tmp_path / "img" / "b.jpg")
    _touch(tmp_path / "img_seg" / "a.png", _PNG)
    _touch(tmp_path / "elsewhere" / "b_mask.png", _PNG)
    (tmp_path / "train.csv").write_text(
        "path,pid,camid,mask_path\nimg/a.jpg,7,1,\nimg/b.jpg,9,2,elsewhere/b_mask.png\n")
    (tmp_path / "query.csv").write_text("img/a.jpg,7,1\n")
    (tmp_path / "gallery.csv").write_text("img/b.jpg,7,2,elsewhere/b_mask.png\n")
    ds = load_dataset(tmp_path)
    assert ds.name == "manifest"
    assert ds.train.pids.tolist() == [0, 1] and ds.train.camids.tolist() == [1, 2]
    assert ds.train.mask_paths[0] == str(tmp_path / "img_seg" / "a.png")
    assert ds.train.mask_paths[1] == str(tmp_path / "elsewhere" / "b_mask.png")
    assert ds.query.pids.tolist() == [7]


def test_manifest_bad_row_names_file_and_line(tmp_path):
    _touch(tmp_path / "a.jpg")
    (tmp_path / "train.csv").write_text("a.jpg,7,1\na.jpg,x7,1\n")
    (tmp_path / "query.csv").write_text("a.jpg,7,1\n")
    (tmp_path / "gallery.csv").write_text("a.jpg,7,1\n")
    with pytest.raises(DataError, match=r"train\.csv:2"):
        load_dataset(tmp_path, missing_masks="full_body")
    (tmp_path / "train.csv").write_text("missing.jpg,7,1\n")
    with pytest.raises(DataError, match="missing.jpg"):
        load_dataset(tmp_path, missing_masks="full_body")


# --------------------------------------------------------------- bad input

def test_unknown_layout_name():
    with pytest.raises(DataError, match="unknown layout 'viper'"):
        load_dataset(".", layout="viper")


def test_folder_that_fits_no_layout(tmp_path):
    (tmp_path / "stuff").mkdir()
    with pytest.raises(DataError, match="cannot tell the data layout"):
        load_dataset(tmp_path)
    with pytest.raises(DataError, match="not found"):
        load_dataset(tmp_path / "nope")


def test_file_name_that_does_not_fit(tmp_path):
    names = dict(_MARKET_NAMES)
    names["query"] = names["query"] + ["holiday.jpg"]
    _market_like(tmp_path, names)
    with pytest.raises(DataError, match=r"holiday\.jpg.*PPPP_cCsS_FFFFFF_KK\.jpg"):
        load_dataset(tmp_path)


def test_mars_bad_name(tmp_path):
    _mars(tmp_path, with_info=False)
    _touch(tmp_path / "bbox_train" / "0001" / "0001_frame.jpg")
    with pytest.raises(DataError, match=r"0001_frame\.jpg.*PPPPCcTttttFfff"):
        load_dataset(tmp_path)


def test_folder_without_images(tmp_path):
    _market_like(tmp_path, _MARKET_NAMES)
    for f in (tmp_path / "query").iterdir():
        f.unlink()
    (tmp_path / "query" / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match=r"query: no images"):
        load_dataset(tmp_path)


def test_empty_training_split(tmp_path):
    names = dict(_MARKET_NAMES)
    names["bounding_box_train"] = ["-1_c1s1_000001_01.jpg"]
    _market_like(tmp_path, names)
    with pytest.raises(DataError, match="training split is empty"):
        load_dataset(tmp_path)


def test_missing_masks_error_names_count_and_files(tmp_path):
    _market_like(tmp_path, _MARKET_NAMES)
    (tmp_path / "query_seg" / "0003_c2s1_000476_00.png").unlink()
    (tmp_path / "bounding_box_train_seg" / "0007_c3s1_000551_01.png").unlink()
    with pytest.raises(DataError, match=r"2 of 10 images have no mask.*0007_c3s1_000551_01\.png"):
        load_dataset(tmp_path)


def test_missing_masks_full_body(tmp_path):
    _market_like(tmp_path, _MARKET_NAMES)
    (tmp_path / "query_seg" / "0003_c2s1_000476_00.png").unlink()
    ds = load_dataset(tmp_path, missing_masks="full_body")
    assert ds.query.mask_paths[1] is None and ds.query.mask_paths[0] is not None
    assert len(ds.query) == 2


def test_missing_masks_skip(tmp_path, caplog):
    _market_like(tmp_path, _MARKET_NAMES)
    (tmp_path / "bounding_box_train_seg" / "0007_c3s1_000551_01.png").unlink()
    with caplog.at_level(logging.WARNING):
        ds = load_dataset(tmp_path, missing_masks="skip")
    assert len(ds.train) == 2 and ds.num_train_ids == 1
    assert [os.path.basename(p) for p in ds.skipped_images] == ["0007_c3s1_000551_01.jpg"]
    assert "skipping 1 of 10 images" in caplog.text


def test_missing_masks_generate_calls_write_masks(tmp_path, monkeypatch):
    _market_like(tmp_path, _MARKET_NAMES, masks=False)
    calls = []

    def write_masks(image_paths, mask_paths, *, model_path=None, num_workers=None):
        calls.append(list(image_paths))
        for m in mask_paths:
            _touch(pathlib.Path(m), _PNG)
        return len(mask_paths)

    # Stand-in for mgcam_tf.segmentation.writer (imported lazily).
    monkeypatch.setitem(sys.modules, "mgcam_tf.segmentation.writer",
                        types.SimpleNamespace(write_masks=write_masks))
    ds = load_dataset(tmp_path, missing_masks="generate")
    assert len(calls) == 1 and len(calls[0]) == 10
    assert all(os.path.isfile(m) for m in ds.gallery.mask_paths)
    assert ds.train.mask_paths[0].endswith(
        os.path.join("bounding_box_train_seg", "0002_c1s1_000451_03.png"))


def test_unknown_missing_masks_policy(tmp_path):
    with pytest.raises(DataError, match="missing_masks"):
        load_dataset(tmp_path, missing_masks="ignore")


def test_split_lengths_checked():
    with pytest.raises(ValueError):
        Split(("a",), (None, None), np.zeros(1, np.int64), np.zeros(1, np.int64))


def test_merged_training_folders_share_ids_only_when_they_hold_the_same_files():
    import numpy as np

    from mgcam_tf.data.layouts import Split, merge_train_splits

    def split(folder, names, pids):
        return Split(tuple(f"{folder}/{n}" for n in names), (None,) * len(names),
                     np.asarray(pids, np.int64), np.zeros(len(names), np.int64))

    detected = split("detected", ["a.jpg", "b.jpg", "c.jpg"], [0, 0, 1])
    labeled = split("labeled", ["c.jpg", "a.jpg", "b.jpg"], [1, 0, 0])   # same files
    other = split("market", ["x.jpg", "y.jpg"], [0, 1])
    merged, num_ids = merge_train_splits([detected, labeled, other])
    assert num_ids == 4
    assert list(merged.pids) == [0, 0, 1, 1, 0, 0, 2, 3]
    assert merged.image_paths[3] == "labeled/c.jpg" and len(merged) == 8


def test_split_with_test_ids_adds_query_and_gallery_people_after_the_training_ids(tmp_path):
    from mgcam_tf.data.layouts import merge_train_splits, split_with_test_ids

    _market_like(tmp_path / "detected", _MARKET_NAMES)
    _market_like(tmp_path / "labeled", _MARKET_NAMES)
    ds = load_dataset(tmp_path / "detected")
    split, num_ids = split_with_test_ids(ds)
    # 2 training ids, then test people 0001 -> 2 and 0003 -> 3; junk and distractors out.
    assert num_ids == 4 and len(split) == 3 + 2 + 3
    names = {os.path.basename(p): int(i) for p, i in zip(split.image_paths, split.pids)}
    assert names["0001_c1s1_001051_00.jpg"] == names["0001_c2s1_000301_01.jpg"] == 2
    assert names["0003_c3s1_000476_01.jpg"] == 3
    assert "-1_c1s1_000401_03.jpg" not in names and "0000_c1s1_000151_01.jpg" not in names
    assert all(m.endswith(".png") and "_seg" in m for m in split.mask_paths)
    # The same images in other boxes still share every id, test people included.
    twin, _ = split_with_test_ids(load_dataset(tmp_path / "labeled"))
    merged, merged_ids = merge_train_splits([split, twin])
    assert merged_ids == 4 and list(merged.pids[:8]) == list(merged.pids[8:])
