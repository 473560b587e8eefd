"""A persistent gallery index: features of many extractions, searchable at a million images.

An index folder holds versions and a pointer to the current one:

  INDEX_DIR/CURRENT          the name of the current version folder ("v-000003\\n")
  INDEX_DIR/v-000003/
    features.npy             float32 [N, D], every gallery embedding, row = id
    pids.npy, camids.npy     int64 [N] (-1 unknown)
    paths.json               N image paths
    index.faiss              the approximate index (IVF-Flat or HNSW; absent for flat)
    index.json               type, N, D, the model fingerprint, the feature
                             folders added (the unit of incremental adds), parameters

Adding features never touches the current version: the new version is
written into a hidden temporary folder inside INDEX_DIR (`.tmp-*`), renamed
to the next `v-NNNNNN`, and only then does `CURRENT` (written with
`mgcam_tf.atomic_files`) point at it. A kill -9 at any moment leaves
`CURRENT` naming a complete version; the leftovers (a `.tmp-*` folder or an
unreferenced version) are removed by the next add.

One writer at a time: an add holds an exclusive `flock` on INDEX_DIR itself
(released by the kernel when its process ends, kill -9 included) and
records its process in INDEX_DIR/LOCK (pid, host, start time). A second add
while the first runs fails at once with one OutputError line naming the
holder; a LOCK left by a writer that died is taken over, with a message
through `notify` (the CLI prints it). Readers take no lock.

A feature folder added again follows its content: the same folder with
the same features and paths (a digest recorded per source) is a no-op; the
same folder with other content (a rerun of mgcam-extract on changed or
other images) replaces that folder's rows, and the faiss index is rebuilt
from features.npy. Rows holding NaN or Inf are refused.

Old rows are never re-embedded: an add appends the new folder's rows to
features.npy and adds them to the faiss index (IVF keeps its coarse
centroids; HNSW inserts into its graph). In `auto` mode the index is rebuilt
from features.npy (no images read) when the gallery grows past
AUTO_FLAT_MAX (flat -> ivf) or to 4x the size its IVF was trained on.

Index types (docs/PERFORMANCE.md, "A gallery of a million", has the figures):

- ``flat``: exact search (faiss brute force over features.npy): interactive
  below AUTO_FLAT_MAX images, where it is the default; beyond, its time
  grows linearly with N.
- ``ivf``: IVF-Flat, nlist = 4 sqrt(N) coarse cells (k-means, seeded, 10
  iterations, on at most 40 points per cell), nprobe = nlist / 125 cells
  searched by default (32 of 4,000 at a million): the cheapest setting with
  recall@10 >= 0.95 on the benchmark's million clustered features
  (benchmarks/bench_search.py --nprobe_sweep). Chosen over HNSW, and these
  defaults over others, by the measurements in docs/PERFORMANCE.md ("A
  gallery of a million"): IVF builds faster, needs no graph and adds cheaply.
- ``hnsw``: HNSW-Flat (M = 32, efConstruction = 80, efSearch = 64), for
  when build time does not matter and single queries must be fastest.

Distances are Euclidean (the square root of faiss's squared L2), as
`mgcam_tf.retrieval.search.rank_gallery`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import re
import shutil
import socket
import tempfile
import time
from typing import Callable, Optional, Sequence

import numpy as np

from mgcam_tf import atomic_files
from mgcam_tf.errors import ConfigError, DataError, OutputError

INDEX_TYPES = ("auto", "flat", "ivf", "hnsw")
# Below this many images `auto` keeps exact search (module doc: fast enough,
# and an IVF needs tens of points per cell to train its centroids).
AUTO_FLAT_MAX = 200_000
# An IVF trained on n points is retrained (auto mode) once the gallery is this many times n.
RETRAIN_GROWTH = 4
CURRENT_FILE = "CURRENT"
LOCK_FILE = "LOCK"
META_FILE = "index.json"
FAISS_FILE = "index.faiss"
FEATURES_FILE = "features.npy"
PIDS_FILE = "pids.npy"
CAMIDS_FILE = "camids.npy"
PATHS_FILE = "paths.json"
VERSION_RE = re.compile(r"^v-(\d{6,})$")
HNSW_M, HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH = 32, 80, 64
TRAIN_POINTS_PER_CELL = 40
FORMAT_VERSION = 1


def _faiss():
    try:
        import faiss
    except ImportError:
        raise ConfigError("the gallery index needs faiss: pip install 'mgcam-tf[index]' "
                          "(faiss-cpu)") from None
    return faiss


def is_index(path: str) -> bool:
    """Whether `path` is an index folder (it has a CURRENT pointer)."""
    return os.path.isfile(os.path.join(path, CURRENT_FILE))


def choose_type(num_images: int, requested: str = "auto") -> str:
    """The index type for a gallery of `num_images`: `requested`, or by size for auto."""
    if requested not in INDEX_TYPES:
        raise ConfigError(f"index_type must be one of {', '.join(INDEX_TYPES)}, got {requested!r}")
    if requested != "auto":
        return requested
    return "flat" if num_images <= AUTO_FLAT_MAX else "ivf"


def default_nlist(num_images: int) -> int:
    """Coarse cells of an IVF over `num_images`: 4 sqrt(N), at least 1, at most
    N / 40 (k-means wants about 40 training points per cell)."""
    return int(max(1, min(4 * np.sqrt(max(num_images, 1)),
                          num_images // TRAIN_POINTS_PER_CELL)))


def default_nprobe(nlist: int) -> int:
    """Cells searched by default: nlist / 125 (module doc: measured), at least 1."""
    return int(max(1, min(nlist, round(nlist / 125))))


def _knn_exact(features: np.ndarray, queries: np.ndarray, k: int):
    faiss = _faiss()
    dist, idx = faiss.knn(queries, features, k)
    return idx, dist


def _build(features: np.ndarray, index_type: str, seed: int = 0):
    """(faiss index or None for flat, parameters) over `features`."""
    faiss = _faiss()
    n, dim = features.shape
    if index_type == "flat":
        return None, {}
    if index_type == "hnsw":
        index = faiss.IndexHNSWFlat(dim, HNSW_M)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        index.add(features)
        return index, {"M": HNSW_M, "ef_construction": HNSW_EF_CONSTRUCTION,
                       "ef_search": HNSW_EF_SEARCH}
    nlist = default_nlist(n)
    quantizer = faiss.IndexFlatL2(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, nlist)
    index.cp.niter = 10          # k-means iterations: 10 reach nearly the recall of 25
    index.cp.seed = seed
    index.cp.max_points_per_centroid = TRAIN_POINTS_PER_CELL
    rng = np.random.default_rng(seed)
    sample = min(n, TRAIN_POINTS_PER_CELL * nlist)
    rows = np.sort(rng.choice(n, sample, replace=False))
    index.train(np.ascontiguousarray(features[rows]))
    index.add(features)
    return index, {"nlist": nlist, "nprobe": default_nprobe(nlist), "trained_on": int(n)}


@dataclasses.dataclass
class GalleryIndex:
    """One version of an index folder, opened read-only (module doc).

    features is memory-mapped; `search` is the Python API of queries.
    """

    index_dir: str
    version_dir: str
    meta: dict
    features: np.ndarray
    pids: np.ndarray
    camids: np.ndarray
    paths: tuple
    _faiss_index: object = None

    def __len__(self) -> int:
        return int(self.features.shape[0])

    @property
    def index_type(self) -> str:
        return self.meta["index_type"]

    @property
    def fingerprint(self) -> str:
        return self.meta["fingerprint"]

    @property
    def feature_dim(self) -> int:
        return int(self.meta["feature_dim"])

    def _approximate(self):
        if self._faiss_index is None:
            faiss = _faiss()
            path = os.path.join(self.version_dir, FAISS_FILE)
            try:
                self._faiss_index = faiss.read_index(path)
            except RuntimeError as err:
                raise DataError(f"{path}: cannot read the faiss index "
                                f"({str(err).splitlines()[0]})") from None
        return self._faiss_index

    def search(self, query_features: np.ndarray, top_k: int = 10, *,
               exact: Optional[bool] = None, nprobe: Optional[int] = None,
               ef_search: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
        """The top_k nearest gallery rows of each query.

        Args:
          query_features: float [Q, D].
          exact: True: brute force over every row whatever the type; None/False:
            the index's own type (flat is exact).
          nprobe (ivf), ef_search (hnsw): override the stored search parameters
            (more = higher recall, slower).
        Returns:
          (indices int64 [Q, k], distances float32 [Q, k]) nearest first,
          k = min(top_k, N); an approximate index that finds fewer than k
          rows pads with index -1 and distance inf.
        """
        q = np.ascontiguousarray(query_features, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.feature_dim:
            raise DataError(f"query features {q.shape} must be [Q, {self.feature_dim}] for the "
                            f"index {self.index_dir}")
        if top_k < 1:
            raise ConfigError(f"top_k must be >= 1, got {top_k}")
        k = min(top_k, len(self))
        if exact or self.index_type == "flat":
            idx, d2 = _knn_exact(np.ascontiguousarray(self.features), q, k)
        else:
            index = self._approximate()
            params = self.meta.get("params", {})
            if self.index_type == "ivf":
                index.nprobe = int(nprobe or params.get("nprobe", 1))
            else:
                index.hnsw.efSearch = int(max(ef_search or params.get("ef_search", 64), k))
            d2, idx = index.search(q, k)
        dist = np.sqrt(np.maximum(d2, 0.0)).astype(np.float32)
        idx = idx.astype(np.int64)
        dist[idx < 0] = np.inf
        return idx, dist


def _read_current(index_dir: str) -> Optional[str]:
    path = os.path.join(index_dir, CURRENT_FILE)
    try:
        name = open(path).read().strip()
    except FileNotFoundError:
        return None
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror})") from None
    if not VERSION_RE.match(name):
        raise DataError(f"{path}: names {name!r}, not a version folder v-NNNNNN")
    return name


def open_index(index_dir: str) -> GalleryIndex:
    """The current version of an index folder.

    Raises:
      DataError: not an index folder, or its current version is unreadable.
    """
    name = _read_current(index_dir)
    if name is None:
        raise DataError(f"{index_dir}: not a gallery index (no {CURRENT_FILE}); build one with "
                        "mgcam-extract --index_dir")
    version_dir = os.path.join(index_dir, name)
    try:
        with open(os.path.join(version_dir, META_FILE)) as f:
            meta = json.load(f)
        features = np.load(os.path.join(version_dir, FEATURES_FILE), mmap_mode="r",
                           allow_pickle=False)
        pids = np.load(os.path.join(version_dir, PIDS_FILE), allow_pickle=False)
        camids = np.load(os.path.join(version_dir, CAMIDS_FILE), allow_pickle=False)
        with open(os.path.join(version_dir, PATHS_FILE)) as f:
            paths = tuple(json.load(f))
    except (OSError, ValueError) as err:
        raise DataError(f"{version_dir}: cannot read the index version ({err})") from None
    n = meta.get("num_images")
    if not (features.ndim == 2 and len(features) == len(pids) == len(camids) == len(paths) == n):
        raise DataError(f"{version_dir}: features {features.shape}, {len(pids)} pids, "
                        f"{len(paths)} paths and num_images {n} disagree")
    return GalleryIndex(os.path.abspath(index_dir), version_dir, meta, features,
                        pids.astype(np.int64), camids.astype(np.int64), paths)


def _versions(index_dir: str) -> list[str]:
    try:
        names = os.listdir(index_dir)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if VERSION_RE.match(n))


def _clean(index_dir: str, keep: Sequence[str]) -> None:
    """Leftovers of killed adds (`.tmp-*`) and versions other than `keep`."""
    for name in os.listdir(index_dir):
        if name.startswith(".tmp-") or (VERSION_RE.match(name) and name not in keep):
            shutil.rmtree(os.path.join(index_dir, name), ignore_errors=True)


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _lock_holder(index_dir: str) -> Optional[dict]:
    try:
        with open(os.path.join(index_dir, LOCK_FILE)) as f:
            holder = json.load(f)
        return holder if isinstance(holder, dict) else {}
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}


def _describe(holder: Optional[dict]) -> str:
    if not holder:
        return "process unknown"
    return (f"process {holder.get('pid', '?')} on {holder.get('host', '?')}, since "
            f"{holder.get('started', '?')}")


@contextlib.contextmanager
def writer_lock(index_dir: str, notify: Optional[Callable[[str], None]] = None):
    """Holds the index's writer lock (module doc) for the body of a `with`.

    Raises:
      OutputError: another process holds it, or the folder cannot be opened.
    """
    try:
        fd = os.open(index_dir, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as err:
        raise OutputError(f"{index_dir}: cannot open the index folder ({err.strerror})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputError(
                f"{index_dir}: another add is writing this index "
                f"({_describe(_lock_holder(index_dir))}); wait for it to finish") from None
        stale = _lock_holder(index_dir)
        if stale is not None and notify is not None:
            notify(f"{index_dir}: took over the lock of a writer that is gone "
                   f"({_describe(stale)}); its unfinished add is discarded")
        atomic_files.write_json(os.path.join(index_dir, LOCK_FILE), {
            "pid": os.getpid(), "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S")})
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                os.remove(os.path.join(index_dir, LOCK_FILE))
    finally:
        os.close(fd)      # releases the flock


def add_features(index_dir: str, features: np.ndarray, pids: np.ndarray, camids: np.ndarray,
                 paths: Sequence[str], *, fingerprint: str, source: str,
                 index_type: str = "auto", seed: int = 0,
                 notify: Optional[Callable[[str], None]] = None) -> GalleryIndex:
    """Appends a set of features to the index at `index_dir` (created), atomically.

    Args:
      features: float [M, D]; pids, camids: int [M]; paths: M image paths.
      fingerprint: the model fingerprint of the features (extraction.json).
      source: a name for this set (a feature folder's absolute path); adding a
        source the current version already holds with the same content is a
        no-op, so a rerun after a kill finishes with the same index; with
        other content, it replaces that source's rows.
      index_type: auto | flat | ivf | hnsw (module doc). auto keeps an
        index's explicit type once chosen; else picks by size.
    Returns:
      The new current version.
    Raises:
      ConfigError: features of another model or size than the index holds,
        an unknown index_type.
      OutputError: the folder cannot be written, another add holds its lock.
    """
    _faiss()
    try:
        os.makedirs(index_dir, exist_ok=True)
    except OSError as err:
        raise OutputError(f"{index_dir}: cannot create the index folder ({err.strerror})") from None
    with writer_lock(index_dir, notify):
        return _add_locked(index_dir, features, pids, camids, paths, fingerprint=fingerprint,
                           source=source, index_type=index_type, seed=seed)


def _add_locked(index_dir, features, pids, camids, paths, *, fingerprint, source,
                index_type, seed) -> GalleryIndex:
    faiss = _faiss()
    new = np.ascontiguousarray(features, dtype=np.float32)
    if new.ndim != 2 or len(new) == 0:
        raise DataError(f"{source}: features must be a non-empty [M, D] array, got {new.shape}")
    m = len(new)
    if not (len(pids) == len(camids) == len(paths) == m):
        raise DataError(f"{source}: {m} features but {len(pids)} pids, {len(camids)} camids, "
                        f"{len(paths)} paths")
    from mgcam_tf.retrieval import extraction

    extraction.refuse_non_finite(new, paths, source)
    digest = _content_digest(new, paths)
    choose_type(0, index_type)      # validates the name
    current = open_index(index_dir) if is_index(index_dir) else None
    if current is not None:
        if current.fingerprint != fingerprint:
            raise ConfigError(
                f"{source}: features of model {fingerprint}, but the index {index_dir} holds "
                f"features of model {current.fingerprint}; extract with the index's export or "
                "start a new --index_dir")
        if current.feature_dim != new.shape[1]:
            raise ConfigError(f"{source}: features of size {new.shape[1]}, the index {index_dir} "
                              f"holds size {current.feature_dim}")
        held = [s for s in current.meta["sources"] if s["source"] == source]
        if held and held[0].get("digest") == digest:
            return current
        replaced = held[0] if held else None
    else:
        replaced = None
    _clean(index_dir, keep=[os.path.basename(current.version_dir)] if current else [])
    # Rows of the current version that stay: all, or all but the replaced source's.
    kept = np.arange(len(current) if current is not None else 0)
    if replaced is not None:
        first, count = replaced["first_row"], replaced["num_images"]
        kept = np.concatenate([kept[:first], kept[first + count:]])
    old_n = len(kept)
    total = old_n + m
    requested = index_type
    if requested == "auto" and current is not None and current.meta.get("requested_type") != "auto":
        requested = current.meta["requested_type"]
    kind = choose_type(total, requested)
    try:
        tmp = tempfile.mkdtemp(prefix=".tmp-", dir=index_dir)
    except OSError as err:
        raise OutputError(f"{index_dir}: cannot write ({err.strerror})") from None
    try:
        # features.npy grows by a streamed copy of the old rows (no second copy in memory).
        feat_path = os.path.join(tmp, FEATURES_FILE)
        out = np.lib.format.open_memmap(feat_path, mode="w+", dtype=np.float32,
                                        shape=(total, new.shape[1]))
        step = 1 << 16
        for s in range(0, old_n, step):
            e = min(s + step, old_n)
            out[s:e] = current.features[kept[s:e]]
        out[old_n:] = new
        out.flush()
        all_features = out
        params = {}
        reuse = (current is not None and replaced is None and current.index_type == kind
                 and kind != "flat"
                 and not (requested == "auto" and kind == "ivf" and total >= RETRAIN_GROWTH *
                          current.meta.get("params", {}).get("trained_on", total)))
        if reuse:
            index = faiss.read_index(os.path.join(current.version_dir, FAISS_FILE))
            index.add(new)
            params = dict(current.meta["params"])
        else:
            index, params = _build(all_features, kind, seed)
        if index is not None:
            faiss.write_index(index, os.path.join(tmp, FAISS_FILE))
            _fsync(os.path.join(tmp, FAISS_FILE))
        del index
        _fsync(feat_path)
        del out, all_features
        old_pids = current.pids[kept] if current is not None else np.zeros(0, np.int64)
        old_cams = current.camids[kept] if current is not None else np.zeros(0, np.int64)
        old_paths = [current.paths[i] for i in kept] if current is not None else []
        atomic_files.write_bytes(os.path.join(tmp, PIDS_FILE), _npy_bytes(
            np.concatenate([old_pids, np.asarray(pids, np.int64)])))
        atomic_files.write_bytes(os.path.join(tmp, CAMIDS_FILE), _npy_bytes(
            np.concatenate([old_cams, np.asarray(camids, np.int64)])))
        atomic_files.write_json(os.path.join(tmp, PATHS_FILE), old_paths + [str(p) for p in paths])
        sources = []
        for held in current.meta["sources"] if current is not None else []:
            if held is replaced:
                continue
            if replaced is not None and held["first_row"] > replaced["first_row"]:
                held = {**held, "first_row": held["first_row"] - replaced["num_images"]}
            sources.append(held)
        sources.append({"source": source, "num_images": m, "first_row": old_n,
                        "digest": digest})
        meta = {"format": FORMAT_VERSION, "index_type": kind, "requested_type": requested,
                "num_images": total, "feature_dim": int(new.shape[1]),
                "fingerprint": fingerprint, "params": params, "sources": sources,
                "metric": "euclidean"}
        atomic_files.write_json(os.path.join(tmp, META_FILE), meta)
        versions = _versions(index_dir)
        last = int(VERSION_RE.match(versions[-1]).group(1)) if versions else 0
        name = f"v-{last + 1:06d}"
        os.rename(tmp, os.path.join(index_dir, name))
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, (OSError, RuntimeError)) and not isinstance(err, OutputError):
            raise OutputError(f"{index_dir}: cannot write the index ({err})") from None
        raise
    atomic_files.write_text(os.path.join(index_dir, CURRENT_FILE), name + "\n")
    # Keep the previous version: a reader that opened it just before the swap
    # may still be loading its files.
    _clean(index_dir, keep=[name] + ([os.path.basename(current.version_dir)] if current else []))
    return open_index(index_dir)


def _content_digest(features: np.ndarray, paths: Sequence[str]) -> str:
    """sha1 of the features' bytes and the paths: what a source held when it was added."""
    import hashlib

    digest = hashlib.sha1(np.ascontiguousarray(features, np.float32).tobytes())
    digest.update("\n".join(map(str, paths)).encode())
    return digest.hexdigest()


def add_feature_folder(index_dir: str, feature_dir: str, *, index_type: str = "auto",
                       notify: Optional[Callable[[str], None]] = None) -> GalleryIndex:
    """Adds an mgcam-extract output folder to the index (its fingerprint from extraction.json)."""
    from mgcam_tf.retrieval import extraction

    fingerprint = extraction.read_fingerprint(feature_dir)
    feats = extraction.load_features(feature_dir)
    return add_features(index_dir, feats.features, feats.pids, feats.camids, feats.paths,
                        fingerprint=fingerprint, source=os.path.abspath(feature_dir),
                        index_type=index_type, notify=notify)


def _npy_bytes(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()
