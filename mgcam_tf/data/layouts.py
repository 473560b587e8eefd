"""Readers that turn a data set on disk into a `ReidDataset` of three `Split`s.

Layouts (as each data set's authors publish it); every image folder `X` may have a mask folder `X_seg`
beside it holding `NAME.png` for `NAME.jpg` (MARS: `bbox_train_seg/PPPP/NAME.png`):

- "market1501": `bounding_box_train`, `bounding_box_test`, `query`, names
  `PPPP_cCsS_FFFFFF_KK.jpg`. Id -1 (junk) and 0000 (distractors) stay in the
  gallery with those ids and are left out of training.
- "dukemtmc": the same folders, names `PPPP_cC_fFFFFFFF.jpg`.
- "cuhk03": a CUHK03-NP folder in Market layout (native names
  `PPPP_cC_N.png`, or Market names). "cuhk03_labeled" / "cuhk03_detected"
  read the `labeled/` / `detected/` subfolder of the CUHK03-NP release.
- "mars": native `bbox_train/PPPP/PPPPCcTttttFfff.jpg`, `bbox_test/...`.
  Query and gallery tracklets come from `info/tracks_test_info.mat` and
  `info/query_IDX.mat` (+ `info/test_name.txt`) when present; otherwise,
  for every test id (not -1 or 0) and camera, the tracklet with the lowest
  tracklet number is the query and all others are the gallery (the rule that
  made `cuhk03_pair1`'s query).
- "folders": users' own data, `train/`, `query/`, `gallery/`, each holding a
  folder per identity (`train/<pid>/*.jpg`, masks `train_seg/<pid>/*.png`).
  The camera is read from a `_cN` or `cN` token in the file name when there
  is one; otherwise query images get camera 0 and gallery images camera 1
  (so no gallery image is ignored by the same-camera rule).
- "manifest": users' own data, `train.csv`, `query.csv`, `gallery.csv` with
  rows `path,pid,camid[,mask_path]` (an optional header row; relative paths
  are relative to the CSV's folder; an empty or absent mask_path means the
  `X_seg/NAME.png` rule).

Query and gallery keep their original ids; training ids are relabelled
densely 0..num_train_ids-1 in order of the original id.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import os
import re
from typing import Callable, Iterable, Optional, Sequence

import numpy as np

from mgcam_tf.conventions import (CAMERA_TOKEN, MASK_SUFFIX,
                                  default_mask_path, is_image_file)
from mgcam_tf.errors import ConfigError, DataError

_log = logging.getLogger(__name__)

MISSING_MASK_POLICIES = ("error", "full_body", "skip", "generate")
# How many missing/bad files an error message lists before "...".
_LIST_IN_MESSAGE = 5


@dataclasses.dataclass(frozen=True)
class Split:
    """One split of a data set; all fields are aligned by index.

    image_paths: N image files. mask_paths: N mask files, None where the
    image has no mask (missing_masks="full_body"). pids: int64 [N] (train:
    dense 0..num_ids-1). camids: int64 [N]. tracklets: int64 [N] tracklet
    index (MARS), else None.
    """

    image_paths: tuple[str, ...]
    mask_paths: tuple[Optional[str], ...]
    pids: np.ndarray
    camids: np.ndarray
    tracklets: Optional[np.ndarray] = None

    def __post_init__(self) -> None:
        n = len(self.image_paths)
        sizes = [len(self.mask_paths), len(self.pids), len(self.camids)]
        if self.tracklets is not None:
            sizes.append(len(self.tracklets))
        if any(s != n for s in sizes):
            raise ValueError(f"Split fields have different lengths: {n}, {sizes}")

    def __len__(self) -> int:
        return len(self.image_paths)


def merge_train_splits(splits: Sequence[Split]) -> tuple[Split, int]:
    """One training split of several folders' (dense ids), and its number of ids.

    A split whose file names are exactly those of an earlier one holds the
    same images in other boxes (CUHK03's detected and labelled boxes: same
    names, ids and split), so it shares that split's ids; any other split's
    ids are new ones, after all ids before it.
    """
    merged_ids, offsets, names_seen = [], [], []
    next_id = 0
    for split in splits:
        names = sorted(os.path.basename(p) for p in split.image_paths)
        twin = next((i for i, seen in enumerate(names_seen) if seen == names), None)
        if twin is not None:
            offset = offsets[twin]
        else:
            offset = next_id
            next_id += int(split.pids.max()) + 1 if len(split) else 0
        offsets.append(offset)
        names_seen.append(names)
        merged_ids.append(np.asarray(split.pids, np.int64) + offset)
    return _concatenate(splits, merged_ids), next_id


def _concatenate(splits: Sequence[Split], pids: Sequence[np.ndarray]) -> Split:
    """One split of `splits` in order, with `pids[i]` as the ids of `splits[i]`."""
    return Split(
        image_paths=tuple(p for s in splits for p in s.image_paths),
        mask_paths=tuple(m for s in splits for m in s.mask_paths),
        pids=np.concatenate([np.asarray(p, np.int64) for p in pids]),
        camids=np.concatenate([np.asarray(s.camids, np.int64) for s in splits]))


def split_with_test_ids(dataset: "ReidDataset") -> tuple[Split, int]:
    """The training split plus every query and gallery image of a person, and its
    number of ids: the data for a final model that is shipped, not evaluated here.

    Test ids (their original ids; junk -1 and distractors 0 left out, as in
    training) are relabelled densely after the training ids, in order of the
    original id: a data set's training and test ids are different people.
    Figures of a model trained on this split are in-sample on this data set.
    """
    parts = [s for s in (dataset.query, dataset.gallery) if len(s)]
    test_pids = np.concatenate([np.asarray(s.pids, np.int64) for s in parts]) \
        if parts else np.zeros([0], np.int64)
    people = np.unique(test_pids[test_pids > 0])
    dense = {int(p): dataset.num_train_ids + i for i, p in enumerate(people)}
    splits = [dataset.train]
    for split in parts:
        keep = np.flatnonzero(np.asarray(split.pids) > 0)
        splits.append(Split(
            image_paths=tuple(split.image_paths[i] for i in keep),
            mask_paths=tuple(split.mask_paths[i] for i in keep),
            pids=np.array([dense[int(p)] for p in np.asarray(split.pids)[keep]], np.int64),
            camids=np.asarray(split.camids)[keep]))
    return _concatenate(splits, [s.pids for s in splits]), dataset.num_train_ids + len(people)


@dataclasses.dataclass(frozen=True)
class ReidDataset:
    """A data set: train / query / gallery splits.

    name: the layout it was read with ("market1501", "mars", ...).
    root: the folder it was read from.
    skipped_images: images dropped because they had no mask
      (missing_masks="skip"), in all splits.
    """

    name: str
    train: Split
    query: Split
    gallery: Split
    num_train_ids: int
    root: str = ""
    skipped_images: tuple[str, ...] = ()

    @property
    def has_train(self) -> bool:
        """False for a test-only set (query and gallery, no training folder)."""
        return len(self.train) > 0

    def require_train(self, purpose: str) -> Split:
        """The training split, or DataError naming the folder and what needed it."""
        if not self.has_train:
            raise DataError(f"{self.root}: this data set has no training split "
                            f"({purpose} needs one; a Market-style set keeps it in "
                            "bounding_box_train/)")
        return self.train


# --------------------------------------------------------------------------
# File names

@dataclasses.dataclass(frozen=True)
class _NamePattern:
    """A file-name convention: regex with groups pid, cam (and maybe track)."""

    regex: re.Pattern
    description: str   # the pattern shown to users in error messages

    def parse(self, path: str) -> re.Match:
        match = self.regex.match(os.path.basename(path))
        if match is None:
            raise DataError(
                f"{path}: file name does not fit the layout; expected "
                f"{self.description}")
        return match


_MARKET = _NamePattern(
    re.compile(r"^(?P<pid>-1|\d+)_c(?P<cam>\d+)s\d+_\d+_\d+\.\w+$", re.I),
    "PPPP_cCsS_FFFFFF_KK.jpg (Market-1501, e.g. 0002_c1s1_000451_03.jpg)")
_DUKE = _NamePattern(
    re.compile(r"^(?P<pid>-1|\d+)_c(?P<cam>\d+)_f\d+\.\w+$", re.I),
    "PPPP_cC_fFFFFFFF.jpg (DukeMTMC-reID, e.g. 0001_c2_f0046182.jpg)")
_CUHK03 = _NamePattern(
    re.compile(r"^(?P<pid>\d+)_c(?P<cam>\d+)[_s]\w*\.\w+$", re.I),
    "PPPP_cC_*.png (CUHK03-NP, e.g. 0001_c1_1.png, or Market-1501 names)")
_MARS = _NamePattern(
    re.compile(r"^(?P<pid>\d{4}|00-1)C(?P<cam>\d)T(?P<track>\d{4})F\d{3}\.\w+$", re.I),
    "PPPPCcTttttFfff.jpg (MARS, e.g. 0001C1T0001F001.jpg)")

_MARKET_FOLDERS = ("bounding_box_train", "query", "bounding_box_test")


def _list_images(folder: str) -> list[str]:
    """Image files of `folder`, sorted by name; DataError if none."""
    if not os.path.isdir(folder):
        raise DataError(f"{folder}: folder not found")
    names = sorted(n for n in os.listdir(folder) if is_image_file(n))
    if not names:
        raise DataError(f"{folder}: no images (.jpg/.jpeg/.png/.bmp) in this folder")
    return [os.path.join(folder, n) for n in names]


def _list_subfolder_images(folder: str) -> list[str]:
    """Images of every subfolder of `folder` (sorted folder, then file name)."""
    if not os.path.isdir(folder):
        raise DataError(f"{folder}: folder not found")
    paths = []
    for sub in sorted(os.listdir(folder)):
        sub_path = os.path.join(folder, sub)
        if sub.startswith(".") or not os.path.isdir(sub_path):
            continue
        paths.extend(os.path.join(sub_path, n)
                     for n in sorted(os.listdir(sub_path)) if is_image_file(n))
    if not paths:
        raise DataError(f"{folder}: no images in its identity subfolders "
                        "(expected FOLDER/<id>/<image>.jpg)")
    return paths


# --------------------------------------------------------------------------
# Masks

class _MaskIndex:
    """Finds `X_seg/.../NAME.png` for `X/.../NAME.ext`, listing each mask
    folder once (a stat per file is slow on MARS' half million frames)."""

    def __init__(self) -> None:
        self._listed: dict[str, frozenset[str]] = {}

    def mask_path(self, image_path: str, image_root: str) -> Optional[str]:
        """The mask of `image_path` (inside `image_root`), or None."""
        rel_dir = os.path.relpath(os.path.dirname(image_path), image_root)
        mask_dir = os.path.normpath(os.path.join(image_root.rstrip("/\\") + MASK_SUFFIX, rel_dir))
        names = self._listed.get(mask_dir)
        if names is None:
            names = frozenset(os.listdir(mask_dir)) if os.path.isdir(mask_dir) else frozenset()
            self._listed[mask_dir] = names
        stem = os.path.splitext(os.path.basename(image_path))[0]
        name = stem + ".png"
        return os.path.join(mask_dir, name) if name in names else None


# --------------------------------------------------------------------------
# Raw records before the missing-mask policy and relabelling

@dataclasses.dataclass
class _Records:
    image_paths: list[str]
    mask_paths: list[Optional[str]]
    wanted_masks: list[str]       # where a missing mask should be written
    pids: list[int]
    camids: list[int]
    tracklets: Optional[list[int]] = None

    def select(self, keep: Sequence[int]) -> "_Records":
        pick = lambda xs: [xs[i] for i in keep]  # noqa: E731
        return _Records(pick(self.image_paths), pick(self.mask_paths),
                        pick(self.wanted_masks), pick(self.pids), pick(self.camids),
                        None if self.tracklets is None else pick(self.tracklets))


def _records_from_folder_files(paths: Sequence[str], image_root: str,
                               parse: Callable[[str], tuple[int, int, Optional[int]]],
                               masks: _MaskIndex) -> _Records:
    recs = _Records([], [], [], [], [], None)
    tracks: list[int] = []
    for path in paths:
        pid, cam, track = parse(path)
        recs.image_paths.append(path)
        recs.mask_paths.append(masks.mask_path(path, image_root))
        recs.wanted_masks.append(default_mask_path(path, image_root))
        recs.pids.append(pid)
        recs.camids.append(cam)
        if track is not None:
            tracks.append(track)
    if tracks:
        recs.tracklets = tracks
    return recs


# --------------------------------------------------------------------------
# Market-1501 family (Market, Duke, CUHK03-NP)

def _market_family_pattern(root: str, layout: str) -> _NamePattern:
    if layout == "market1501":
        return _MARKET
    if layout == "dukemtmc":
        return _DUKE
    if layout == "cuhk03":
        return _CUHK03
    # auto: decide from the first training image's name (a test-only set: the
    # first query's).
    train_root = os.path.join(root, "bounding_box_train")
    first = _list_images(train_root if os.path.isdir(train_root)
                         else os.path.join(root, "query"))[0]
    name = os.path.basename(first)
    for pattern in (_MARKET, _DUKE, _CUHK03):
        if pattern.regex.match(name):
            return pattern
    raise DataError(
        f"{first}: file name fits no known layout; expected {_MARKET.description}, "
        f"{_DUKE.description} or {_CUHK03.description}")


def _layout_of_pattern(pattern: _NamePattern) -> str:
    return {id(_MARKET): "market1501", id(_DUKE): "dukemtmc",
            id(_CUHK03): "cuhk03"}[id(pattern)]


def _read_market_family(root: str, layout: str) -> tuple[str, dict[str, _Records]]:
    # The training folder is optional: a test-only set (cross-domain
    # evaluation) has query/ and bounding_box_test/ alone.
    for folder in _MARKET_FOLDERS[1:]:
        if not os.path.isdir(os.path.join(root, folder)):
            raise DataError(f"{os.path.join(root, folder)}: folder not found "
                            f"(a {layout} data set needs {', '.join(_MARKET_FOLDERS[1:])}, "
                            f"and {_MARKET_FOLDERS[0]} to train on)")
    pattern = _market_family_pattern(root, layout)

    def parse(path: str) -> tuple[int, int, None]:
        match = pattern.parse(path)
        return int(match.group("pid")), int(match.group("cam")), None

    masks = _MaskIndex()
    splits = {}
    for split, folder in zip(("train", "query", "gallery"), _MARKET_FOLDERS):
        image_root = os.path.join(root, folder)
        if split == "train" and not os.path.isdir(image_root):
            splits[split] = _Records([], [], [], [], [], None)
            continue
        splits[split] = _records_from_folder_files(
            _list_images(image_root), image_root, parse, masks)
    name = layout if layout != "auto" else _layout_of_pattern(pattern)
    return name, splits


# --------------------------------------------------------------------------
# MARS

def _parse_mars(path: str) -> tuple[int, int, int]:
    match = _MARS.parse(path)
    pid = -1 if match.group("pid") == "00-1" else int(match.group("pid"))
    return pid, int(match.group("cam")), int(match.group("track"))


def _dense_tracklets(recs: _Records) -> list[int]:
    """Tracklet index per image: dense over sorted (pid, cam, T) keys, since
    MARS numbers tracklets within one id and camera only."""
    keys = list(zip(recs.pids, recs.camids, recs.tracklets or []))
    index = {key: i for i, key in enumerate(sorted(set(keys)))}
    return [index[key] for key in keys]


def _load_mat(path: str, variable: str) -> np.ndarray:
    import scipy.io  # lazy: only MARS with info/ files needs scipy

    try:
        contents = scipy.io.loadmat(path)
    except Exception as exc:  # scipy raises several types for bad files
        raise DataError(f"{path}: cannot read this .mat file ({exc})") from exc
    arrays = {k: v for k, v in contents.items() if not k.startswith("__")}
    if variable in arrays:
        return np.asarray(arrays[variable])
    if len(arrays) == 1:  # tolerate a renamed variable
        return np.asarray(next(iter(arrays.values())))
    raise DataError(f"{path}: variable {variable!r} not found (has {sorted(arrays)})")


def _mars_test_from_info(info: str, test: _Records) -> tuple[_Records, _Records]:
    track_info = _load_mat(os.path.join(info, "tracks_test_info.mat"), "track_test_info")
    query_idx = _load_mat(os.path.join(info, "query_IDX.mat"), "query_IDX").astype(np.int64).ravel() - 1
    if track_info.ndim != 2 or track_info.shape[1] < 2:
        raise DataError(f"{os.path.join(info, 'tracks_test_info.mat')}: expected an "
                        f"[num_tracklets, 4] array (start, end, pid, cam), got {track_info.shape}")
    # The start/end indices (1-based) count lines of info/test_name.txt, which
    # lists bbox_test in sorted order; follow the file when it is there.
    by_name = {os.path.basename(p): i for i, p in enumerate(test.image_paths)}
    names_file = os.path.join(info, "test_name.txt")
    if os.path.isfile(names_file):
        with open(names_file, encoding="utf-8") as f:
            names = [line.strip() for line in f if line.strip()]
        missing = [n for n in names if n not in by_name]
        if missing:
            raise DataError(f"{names_file}: {len(missing)} listed images are not in "
                            f"bbox_test (first: {', '.join(missing[:_LIST_IN_MESSAGE])})")
        order = [by_name[n] for n in names]
    else:
        order = list(range(len(test.image_paths)))
    n_tracks = track_info.shape[0]
    if query_idx.size and (query_idx.min() < 0 or query_idx.max() >= n_tracks):
        raise DataError(f"{os.path.join(info, 'query_IDX.mat')}: indices outside "
                        f"1..{n_tracks} (the tracklets of tracks_test_info.mat)")
    is_query = np.zeros(n_tracks, bool)
    is_query[query_idx] = True
    picks: dict[bool, list[int]] = {True: [], False: []}
    tracklet_of: dict[int, int] = {}
    for t, row in enumerate(track_info):
        start, end = int(row[0]) - 1, int(row[1])
        if start < 0 or end > len(order) or start >= end:
            raise DataError(f"{os.path.join(info, 'tracks_test_info.mat')}: tracklet "
                            f"{t + 1} spans images {start + 1}..{end}, outside "
                            f"1..{len(order)} (the images of bbox_test)")
        for i in order[start:end]:
            picks[bool(is_query[t])].append(i)
            tracklet_of[i] = t
    query, gallery = test.select(picks[True]), test.select(picks[False])
    query.tracklets = [tracklet_of[i] for i in picks[True]]
    gallery.tracklets = [tracklet_of[i] for i in picks[False]]
    return query, gallery


def _mars_test_by_rule(test: _Records) -> tuple[_Records, _Records]:
    """No info/ files: per test id (> 0) and camera, the tracklet with the
    lowest number is the query; every other tracklet is the gallery."""
    tracklets = _dense_tracklets(test)
    first: dict[tuple[int, int], int] = {}
    for pid, cam, raw, t in zip(test.pids, test.camids, test.tracklets or [], tracklets):
        if pid > 0:
            key = (pid, cam)
            if key not in first or raw < first[key][0]:
                first[key] = (raw, t)
    query_tracklets = {t for _, t in first.values()}
    q_idx = [i for i, t in enumerate(tracklets) if t in query_tracklets]
    g_idx = [i for i, t in enumerate(tracklets) if t not in query_tracklets]
    query, gallery = test.select(q_idx), test.select(g_idx)
    query.tracklets = [tracklets[i] for i in q_idx]
    gallery.tracklets = [tracklets[i] for i in g_idx]
    return query, gallery


def _read_mars(root: str) -> tuple[str, dict[str, _Records]]:
    masks = _MaskIndex()
    splits = {}
    train_root = os.path.join(root, "bbox_train")
    test_root = os.path.join(root, "bbox_test")
    train = _records_from_folder_files(
        _list_subfolder_images(train_root), train_root, _parse_mars, masks)
    train.tracklets = _dense_tracklets(train)
    test = _records_from_folder_files(
        _list_subfolder_images(test_root), test_root, _parse_mars, masks)
    info = os.path.join(root, "info")
    has_info = all(os.path.isfile(os.path.join(info, f))
                   for f in ("tracks_test_info.mat", "query_IDX.mat"))
    query, gallery = (_mars_test_from_info(info, test) if has_info
                      else _mars_test_by_rule(test))
    splits.update(train=train, query=query, gallery=gallery)
    return "mars", splits


# --------------------------------------------------------------------------
# Users' own data: folder per identity, or CSV manifests

def _camera_from_name(path: str) -> Optional[int]:
    match = CAMERA_TOKEN.search(os.path.splitext(os.path.basename(path))[0])
    return int(match.group(1)) if match else None


def _read_folders(root: str) -> tuple[str, dict[str, _Records]]:
    masks = _MaskIndex()
    listed = {s: _list_subfolder_images(os.path.join(root, s))
              for s in ("train", "query", "gallery")}
    # Identity folder names: integers are kept; otherwise names map to ids
    # 1.. in sorted order, shared by all splits so query/gallery ids match.
    id_names = sorted({os.path.basename(os.path.dirname(p))
                       for paths in listed.values() for p in paths})
    numeric = all(re.fullmatch(r"-?\d+", n) for n in id_names)
    id_of = {n: (int(n) if numeric else i + 1) for i, n in enumerate(id_names)}
    default_cam = {"train": 0, "query": 0, "gallery": 1}
    splits = {}
    for split, paths in listed.items():
        image_root = os.path.join(root, split)

        def parse(path: str, split: str = split) -> tuple[int, int, None]:
            cam = _camera_from_name(path)
            return (id_of[os.path.basename(os.path.dirname(path))],
                    default_cam[split] if cam is None else cam, None)

        splits[split] = _records_from_folder_files(paths, image_root, parse, masks)
    return "folders", splits


def _read_manifest_file(csv_path: str) -> _Records:
    base = os.path.dirname(os.path.abspath(csv_path))
    recs = _Records([], [], [], [], [], None)
    with open(csv_path, newline="", encoding="utf-8") as f:
        rows = [(n, row) for n, row in enumerate(csv.reader(f), start=1)
                if row and any(c.strip() for c in row)]
    for n, row in rows:
        fields = [c.strip() for c in row]
        if n == rows[0][0] and len(fields) >= 2 and not re.fullmatch(r"-?\d+", fields[1]):
            continue  # header row
        if len(fields) not in (3, 4):
            raise DataError(f"{csv_path}:{n}: expected path,pid,camid[,mask_path], "
                            f"got {len(fields)} fields")
        try:
            pid, cam = int(fields[1]), int(fields[2])
        except ValueError:
            raise DataError(f"{csv_path}:{n}: pid and camid must be integers, "
                            f"got {fields[1]!r}, {fields[2]!r}") from None
        path = os.path.normpath(os.path.join(base, fields[0]))
        if not os.path.isfile(path):
            raise DataError(f"{csv_path}:{n}: image {path} not found")
        wanted = (os.path.normpath(os.path.join(base, fields[3]))
                  if len(fields) == 4 and fields[3] else default_mask_path(path))
        recs.image_paths.append(path)
        recs.mask_paths.append(wanted if os.path.isfile(wanted) else None)
        recs.wanted_masks.append(wanted)
        recs.pids.append(pid)
        recs.camids.append(cam)
    return recs


def _read_manifest(root: str) -> tuple[str, dict[str, _Records]]:
    splits = {}
    for split in ("train", "query", "gallery"):
        csv_path = os.path.join(root, split + ".csv")
        if not os.path.isfile(csv_path):
            raise DataError(f"{csv_path}: manifest not found (the manifest layout "
                            "needs train.csv, query.csv and gallery.csv)")
        splits[split] = _read_manifest_file(csv_path)
    return "manifest", splits


# --------------------------------------------------------------------------
# Layout detection, masks policy, relabelling

# --------------------------------------------------------------------------
# The registry: one reader per layout, (data_dir) -> (name, root, splits)

Reader = Callable[[str], "tuple[str, str, dict[str, _Records]]"]


def _market_family(layout: str) -> Reader:
    def read(data_dir: str):
        name, splits = _read_market_family(data_dir, layout)
        return name, data_dir, splits
    return read


def _cuhk03_np(boxes: str) -> Reader:
    def read(data_dir: str):  # the labeled/ or detected/ subfolder of a CUHK03-NP root
        sub = os.path.join(data_dir, boxes)
        return f"cuhk03_{boxes}", sub, _read_market_family(sub, "cuhk03")[1]
    return read


def _root_reader(read_splits: Callable[[str], tuple]) -> Reader:
    def read(data_dir: str):
        name, splits = read_splits(data_dir)
        return name, data_dir, splits
    return read


LAYOUT_READERS: dict[str, Reader] = {
    "market1501": _market_family("market1501"),
    "dukemtmc": _market_family("dukemtmc"),
    "cuhk03": _market_family("cuhk03"),
    "cuhk03_labeled": _cuhk03_np("labeled"),
    "cuhk03_detected": _cuhk03_np("detected"),
    "mars": _root_reader(_read_mars),
    "folders": _root_reader(_read_folders),
    "manifest": _root_reader(_read_manifest),
}


def register_layout(name: str, reader: Reader) -> None:
    """Adds a reader for a layout of one's own (`load_dataset(..., layout=name)`)."""
    if name == "auto" or name in LAYOUT_READERS:
        raise ConfigError(f"layout {name!r} is already registered")
    LAYOUT_READERS[name] = reader


def layout_names() -> tuple[str, ...]:
    """"auto" and every registered layout (the commands' --layout choices)."""
    return ("auto", *LAYOUT_READERS)


def detect_layout(data_dir: str) -> str:
    """The layout name of `data_dir` (a built-in one of `LAYOUT_READERS`).

    Raises DataError naming the folder when no layout fits, or when it is a
    CUHK03-NP root holding both labeled/ and detected/ (choose one).
    """
    if not os.path.isdir(data_dir):
        raise DataError(f"{data_dir}: data folder not found")
    has = lambda *parts: os.path.isdir(os.path.join(data_dir, *parts))  # noqa: E731
    labeled, detected = has("labeled", "bounding_box_train"), has("detected", "bounding_box_train")
    if labeled and detected:
        raise DataError(f"{data_dir}: CUHK03-NP folder with both labeled/ and detected/ "
                        "boxes; pass layout='cuhk03_labeled' or 'cuhk03_detected' "
                        "(or the subfolder itself)")
    if labeled:
        return "cuhk03_labeled"
    if detected:
        return "cuhk03_detected"
    if has("bounding_box_train") or (has("query") and has("bounding_box_test")):
        return _layout_of_pattern(_market_family_pattern(data_dir, "auto"))
    if has("bbox_train") or has("bbox_test"):
        return "mars"
    if all(os.path.isfile(os.path.join(data_dir, s + ".csv"))
           for s in ("train", "query", "gallery")):
        return "manifest"
    if has("train") and has("query") and has("gallery"):
        return "folders"
    raise DataError(
        f"{data_dir}: cannot tell the data layout; expected bounding_box_train/, "
        "query/, bounding_box_test/ (Market-1501, DukeMTMC-reID, CUHK03-NP), "
        "labeled/ or detected/ (CUHK03-NP), bbox_train/ and bbox_test/ (MARS), "
        "train.csv, query.csv, gallery.csv (manifest), or train/, query/, "
        "gallery/ with a folder per identity")


def _apply_mask_policy(splits: dict[str, _Records], policy: str,
                       root: str) -> tuple[dict[str, _Records], tuple[str, ...]]:
    missing = [(s, i) for s, recs in splits.items()
               for i, m in enumerate(recs.mask_paths) if m is None]
    if not missing:
        return splits, ()
    total = sum(len(r.image_paths) for r in splits.values())
    missing_images = [splits[s].image_paths[i] for s, i in missing]
    if policy == "error":
        wanted = [splits[s].wanted_masks[i] for s, i in missing[:_LIST_IN_MESSAGE]]
        raise DataError(
            f"{root}: {len(missing)} of {total} images have no mask (first missing: "
            f"{', '.join(wanted)}{', ...' if len(missing) > _LIST_IN_MESSAGE else ''}); "
            "make them (missing_masks='generate'), use a full-body mask "
            "('full_body') or leave those images out ('skip')")
    if policy == "full_body":
        return splits, ()
    if policy == "skip":
        _log.warning("%s: skipping %d of %d images that have no mask (first: %s)",
                     root, len(missing), total, missing_images[0])
        out = {}
        for s, recs in splits.items():
            keep = [i for i, m in enumerate(recs.mask_paths) if m is not None]
            out[s] = recs.select(keep)
        return out, tuple(missing_images)
    # "generate": lazy import, mgcam_tf.segmentation pulls in the segmentation model.
    from mgcam_tf.segmentation.writer import write_masks

    wanted = [splits[s].wanted_masks[i] for s, i in missing]
    write_masks(missing_images, wanted)
    not_written = [w for w in wanted if not os.path.isfile(w)]
    if not_written:
        raise DataError(f"{root}: mask generation left {len(not_written)} masks "
                        f"unwritten (first: {not_written[0]})")
    for (s, i), w in zip(missing, wanted):
        splits[s].mask_paths[i] = w
    return splits, ()


def _to_split(recs: _Records, pids: Optional[Iterable[int]] = None) -> Split:
    return Split(
        image_paths=tuple(recs.image_paths),
        mask_paths=tuple(recs.mask_paths),
        pids=np.asarray(list(recs.pids if pids is None else pids), np.int64),
        camids=np.asarray(recs.camids, np.int64),
        tracklets=None if recs.tracklets is None else np.asarray(recs.tracklets, np.int64))


def _dense_train(train: _Records, folder: str) -> tuple[Split, int]:
    if not train.image_paths:  # a test-only set: ReidDataset.require_train refuses it
        return _to_split(train), 0
    # Junk (-1) and distractor (0) boxes carry no identity to learn.
    keep = [i for i, pid in enumerate(train.pids) if pid > 0]
    train = train.select(keep)
    if not keep:
        raise DataError(f"{folder}: the training split is empty (no images with an "
                        "identity above 0)")
    ids = sorted(set(train.pids))
    relabel = {pid: i for i, pid in enumerate(ids)}
    return _to_split(train, [relabel[p] for p in train.pids]), len(ids)


def load_dataset(data_dir: str, layout: str = "auto",
                 missing_masks: str = "error") -> ReidDataset:
    """Reads a re-identification data set.

    Args:
      data_dir: the data set's root folder.
      layout: one of layout_names(); "auto" detects it (see detect_layout).
      missing_masks: what to do with images that have no mask:
        "error" (DataError naming the count and the first missing files),
        "full_body" (mask path None: the pipeline uses an all-255 mask),
        "skip" (drop them; listed in `ReidDataset.skipped_images` and logged
        as a warning), "generate" (write them with
        `mgcam_tf.segmentation.writer.write_masks` to `X_seg/NAME.png`).

    Returns:
      A ReidDataset; train ids dense 0..num_train_ids-1, query/gallery ids as
      on disk (-1 junk, 0 distractors kept in the gallery, not in query). A
      Market-style folder without bounding_box_train/ is a test-only set: an
      empty train split (num_train_ids 0; `require_train` refuses it).

    Raises:
      DataError naming the file or folder at fault.
    """
    data_dir = os.fspath(data_dir)
    if layout != "auto" and layout not in LAYOUT_READERS:
        raise DataError(f"unknown layout {layout!r}; expected one of {', '.join(layout_names())}")
    if missing_masks not in MISSING_MASK_POLICIES:
        raise DataError(f"unknown missing_masks policy {missing_masks!r}; expected one "
                        f"of {', '.join(MISSING_MASK_POLICIES)}")
    if not os.path.isdir(data_dir):
        raise DataError(f"{data_dir}: data folder not found")
    if layout == "auto":
        layout = detect_layout(data_dir)
    name, root, splits = LAYOUT_READERS[layout](data_dir)

    splits, skipped = _apply_mask_policy(splits, missing_masks, root)
    train, num_ids = _dense_train(splits["train"], root)
    for split in ("query", "gallery"):
        if not splits[split].image_paths:
            raise DataError(f"{root}: the {split} split is empty")
    # Junk and distractors are never queries (the Market-1501 evaluation code, `evaluation.m`).
    query_recs = splits["query"]
    query_recs = query_recs.select([i for i, p in enumerate(query_recs.pids) if p > 0])
    if not query_recs.image_paths:
        raise DataError(f"{root}: the query split has no image with an identity above 0")
    return ReidDataset(name=name, train=train, query=_to_split(query_recs),
                       gallery=_to_split(splits["gallery"]), num_train_ids=num_ids,
                       root=root, skipped_images=skipped)
