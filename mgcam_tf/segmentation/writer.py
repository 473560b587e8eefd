"""Masks for a folder of images: where each goes (`X_seg/NAME.png`), written atomically by threads.
"""

from __future__ import annotations

import os
import queue
import threading
from typing import Callable, Sequence
import numpy as np
from mgcam_tf.conventions import IMAGE_EXTENSIONS, MASK_SUFFIX, is_image_file
from mgcam_tf.errors import ConfigError, DataError
from mgcam_tf import atomic_files
from mgcam_tf.segmentation import choice
from mgcam_tf.segmentation import model_file
from mgcam_tf.segmentation import segmenter as blazepose_segmenter

# Split folders of the layouts `mgcam_tf.data.layouts` reads: the `_seg` suffix goes on these
# even when images sit deeper (MARS `bbox_train/0001/`, `train/<id>/`).
SPLIT_FOLDER_NAMES = frozenset({
    "bounding_box_train", "bounding_box_test", "query", "gallery",
    "bbox_train", "bbox_test", "train", "test"})


def available_cores() -> int:
    """CPU cores this process may run on (respects taskset / cgroup affinity)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:      # not on Linux
        return max(1, os.cpu_count() or 1)


def encode_png(mask: np.ndarray) -> bytes:
    """PNG bytes of a uint8 [H, W] mask (one grey channel, 0 / 255)."""
    import tensorflow as tf

    return tf.io.encode_png(mask[..., None]).numpy()


def _write_mask(mask_path: str, png: bytes, made_dirs: set[str]) -> None:
    """Writes the PNG under a temporary name and renames it: a killed run
    leaves either the whole mask or none (a hidden `.NAME.png.*.tmp` at worst,
    never a truncated `NAME.png` that a resumed run would skip)."""
    folder = os.path.dirname(mask_path) or "."
    if folder not in made_dirs:
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as err:
            raise DataError(f"{folder}: cannot create the mask folder ({err.strerror})") from err
        made_dirs.add(folder)
    try:
        atomic_files.write_bytes(mask_path, png)
    except OSError as err:
        raise DataError(f"{mask_path}: cannot write the mask ({err.strerror})") from err


def write_masks(image_paths: Sequence[str], mask_paths: Sequence[str], *,
                model_path: str | None = None, num_workers: int | None = None,
                progress: Callable[[int], None] | None = None,
                on_bad_image: Callable[[str, DataError], None] | None = None,
                cache_dir: str | None = None,
                segmenter: str | None = None) -> int:
    """Writes the body mask of `image_paths[i]` to `mask_paths[i]` (PNG, 0/255).

    Masks that already exist are skipped, so a killed run resumes where it
    stopped; each PNG is written under a temporary name and renamed.
    `num_workers` threads (default: all cores) each run their own
    interpreter, with `cores // num_workers` kernel threads.

    Args:
      image_paths, mask_paths: equally long; mask folders are created.
      model_path: the model file or wheel; None: `$MGCAM_MASK_MODEL`, else
        fetched into the cache (`fetch_model`).
      num_workers: worker threads; None or 0: one per core.
      progress: called (in the calling thread) with the number of images
        handled since its last call (written, skipped or bad); the calls
        add up to `len(image_paths)`.
      on_bad_image: called as `on_bad_image(path, error)` for an image that
        cannot be decoded, which is then skipped; None: such an image
        raises its DataError.
      cache_dir: model cache folder for `fetch_model`.
      segmenter: `choice.SEGMENTERS`: "blazepose" (BlazePose-full, one
        interpreter per thread) or "distilled" (`distilled`, batches of 64
        through tf.data; `model_path` names its weights, None: the shipped
        ones; `num_workers` the decoding threads); None: the one
        `model_path` is the model of, else the default (`choice.for_model_file`).

    Returns:
      How many masks were written (skipped and bad images not counted).

    Raises:
      DataError: an undecodable image (without `on_bad_image`), an
        unwritable mask folder, or a model that cannot be had.
      ConfigError: the two lists differ in length, or num_workers < 0.
    """
    if len(image_paths) != len(mask_paths):
        raise ConfigError(f"write_masks: {len(image_paths)} images but "
                          f"{len(mask_paths)} mask paths")
    if num_workers is not None and num_workers < 0:
        raise ConfigError(f"num_workers must be >= 0, got {num_workers}")
    todo = [(str(i), str(m)) for i, m in zip(image_paths, mask_paths) if not os.path.exists(m)]
    if progress is not None and len(todo) < len(image_paths):
        progress(len(image_paths) - len(todo))
    if not todo:
        return 0
    if choice.for_model_file(segmenter, model_path) == choice.DISTILLED:
        return _write_distilled(todo, model_path, num_workers, progress, on_bad_image)
    model = model_file.resolve_model_path(model_path, cache_dir)
    cores = available_cores()
    workers = max(1, min(num_workers or cores, len(todo)))
    # Kernel threads fill the cores the workers leave: one worker on two
    # cores runs a two-thread interpreter (about 5 ms instead of 8 per image).
    threads_each = max(1, cores // workers)

    next_item = iter(todo)
    lock = threading.Lock()
    stop = threading.Event()
    done: "queue.SimpleQueue[tuple[str, object]]" = queue.SimpleQueue()
    made_dirs: set[str] = set()

    def work() -> None:
        try:
            segment = blazepose_segmenter.BodySegmenter(model, num_threads=threads_each)
            while not stop.is_set():
                with lock:
                    item = next(next_item, None)
                if item is None:
                    break
                image_path, mask_path = item
                try:
                    image = blazepose_segmenter.decode_image(image_path)
                except DataError as err:
                    if on_bad_image is None:
                        raise
                    done.put(("bad", (image_path, err)))
                    continue
                _write_mask(mask_path, encode_png(segment(image)), made_dirs)
                done.put(("written", None))
        except BaseException as err:  # handed to the calling thread, which re-raises
            stop.set()
            done.put(("error", err))
        finally:
            done.put(("exit", None))

    threads = [threading.Thread(target=work, name=f"mgcam-masks-{n}", daemon=True)
               for n in range(workers)]
    for t in threads:
        t.start()
    written, running, first_error = 0, workers, None
    try:
        while running:
            kind, payload = done.get()
            handled = 0
            # Drain what else is queued so progress is called in batches.
            while True:
                if kind == "exit":
                    running -= 1
                elif kind == "error":
                    first_error = first_error or payload
                elif kind == "written":
                    written += 1
                    handled += 1
                elif kind == "bad":
                    handled += 1
                    on_bad_image(*payload)
                try:
                    kind, payload = done.get_nowait()
                except queue.Empty:
                    break
            if handled and progress is not None:
                progress(handled)
    except BaseException:
        stop.set()          # KeyboardInterrupt: workers finish their image and stop
        raise
    finally:
        stop.set()
        for t in threads:
            t.join()
    if first_error is not None:
        raise first_error
    return written


def _write_distilled(todo: list[tuple[str, str]], weights_path: str | None,
                     num_workers: int | None, progress: Callable[[int], None] | None,
                     on_bad_image: Callable[[str, DataError], None] | None) -> int:
    """`write_masks` with the distilled network: tf.data decodes (`num_workers`
    threads, default all cores) while the network runs on batches; images
    tf.data could not decode are decoded again here for their error."""
    from mgcam_tf.segmentation import distilled

    net = distilled.load_mask_net(weights_path)
    targets: dict[str, list[str]] = {}
    for image_path, mask_path in todo:
        targets.setdefault(image_path, []).append(mask_path)
    made_dirs: set[str] = set()
    written = pending = 0
    for image_path, png in distilled.mask_pngs(net, list(targets),
                                               parallel_reads=num_workers or None):
        for mask_path in targets.pop(image_path):
            _write_mask(mask_path, png, made_dirs)
            written += 1
            pending += 1
        if progress is not None and pending >= 64:
            progress(pending)
            pending = 0
    for image_path, mask_paths in targets.items():
        try:
            image = blazepose_segmenter.decode_image(image_path)
        except DataError as err:
            if on_bad_image is None:
                raise
            on_bad_image(image_path, err)
            pending += len(mask_paths)
            continue
        # Decodable here but not by tf.data's decoder (e.g. a GIF): one at a time.
        png = encode_png(distilled.DistilledSegmenter(weights_path)(image))
        for mask_path in mask_paths:
            _write_mask(mask_path, png, made_dirs)
            written += 1
            pending += 1
    if progress is not None and pending:
        progress(pending)
    return written


def _split_folder(data_dir: str, folder: str) -> str:
    """The folder that gets the `_seg` suffix for images in `folder`.

    The shallowest of `data_dir` and the folders below it on the way to
    `folder` whose name is a known split (`query`, `bbox_train`, `train`,
    ...; so `cuhk03/labeled/query/` and a folder of several data sets
    work); otherwise the top-level folder under `data_dir` (or `data_dir`
    itself when the images lie directly in it).
    """
    rel = os.path.relpath(folder, data_dir)
    parts = [] if rel == "." else rel.split(os.sep)
    if os.path.basename(os.path.normpath(data_dir)) in SPLIT_FOLDER_NAMES:
        return data_dir
    for depth, part in enumerate(parts):
        if part in SPLIT_FOLDER_NAMES:
            return os.path.join(data_dir, *parts[:depth + 1])
    return os.path.join(data_dir, parts[0]) if parts else data_dir


def mask_folders(data_dir: str) -> list[tuple[str, str]]:
    """(image_folder, mask_folder) for every folder under `data_dir` holding images.

    An image folder `X` maps to `X_seg` beside it. Below a split folder the
    suffix goes on the split and files keep their sub-path, as in MARS:
    `bbox_train/0001/x.jpg` -> `bbox_train_seg/0001/x.png` (see
    `_split_folder`). Folders ending in `_seg`, with everything in them,
    and hidden folders are not scanned. Sorted by image folder.

    Raises:
      DataError: `data_dir` does not exist, is a mask folder, or holds no images.
    """
    data_dir = os.path.normpath(str(data_dir))
    if not os.path.isdir(data_dir):
        raise DataError(f"{data_dir}: folder not found (--data_dir)")
    if data_dir.endswith(MASK_SUFFIX):
        raise DataError(f"{data_dir}: is a mask folder (ends in {MASK_SUFFIX}); "
                        "pass the folder that holds the images")
    pairs = []
    # Symlinked split folders are followed, as the training reader follows them.
    for folder, subdirs, files in os.walk(data_dir, followlinks=True):
        subdirs[:] = sorted(d for d in subdirs
                            if not d.startswith(".") and not d.endswith(MASK_SUFFIX))
        if any(is_image_file(f) for f in files):
            split = _split_folder(data_dir, folder)
            sub = os.path.relpath(folder, split)
            pairs.append((folder, os.path.normpath(os.path.join(split + MASK_SUFFIX, sub))))
    if not pairs:
        raise DataError(f"{data_dir}: no images found (looked for "
                        f"{', '.join(IMAGE_EXTENSIONS)} in it and its subfolders)")
    return sorted(pairs)


def mask_jobs(data_dir: str) -> tuple[list[str], list[str]]:
    """Every image under `data_dir` and where its mask goes (`NAME.png`), for `write_masks`.

    Raises:
      DataError: as `mask_folders`, or two images of one folder would share
        a mask (`a.jpg` and `a.png`).
    """
    images, masks = [], []
    for image_folder, mask_folder in mask_folders(data_dir):
        seen: dict[str, str] = {}
        for name in sorted(os.listdir(image_folder)):
            if not is_image_file(name):
                continue
            mask_name = os.path.splitext(name)[0] + ".png"
            if mask_name in seen:
                raise DataError(f"{os.path.join(image_folder, name)}: shares its mask "
                                f"{mask_name} with {seen[mask_name]}; rename one of them")
            seen[mask_name] = name
            images.append(os.path.join(image_folder, name))
            masks.append(os.path.join(mask_folder, mask_name))
    return images, masks
