"""Users' own image files: listing them, their ids and cameras, and their masks.

MGCAM needs a body mask beside every image. Users' images rarely come with
one, so a mask is looked for where the data sets keep it (`X_seg/NAME.png`
beside the folder `X` holding `NAME.jpg`) and, when there is none, made
with the BlazePose segmenter of `mgcam_tf.segmentation` (BlazePose-full by default) into a cache
folder (never into the user's folders), where a later run finds it again.

Mask policies:
  "auto"       the mask beside the image, else a generated one (default);
  "files"      the mask beside the image, else DataError;
  "generate"   always generated (masks beside the images are ignored);
  "full_body"  the mask beside the image, else none (an all-255 mask, as
               the data pipeline's `missing_masks="full_body"`).
"""

from __future__ import annotations

import hashlib
import os
import re
from typing import Callable, Optional, Sequence

import numpy as np

from mgcam_tf.conventions import (CAMERA_TOKEN, IMAGE_EXTENSIONS, MASK_IN_GRAPH, MASK_SUFFIX,
                                  default_mask_path, is_image_file)
from mgcam_tf.errors import ConfigError, DataError
from mgcam_tf import atomic_files

MASK_POLICIES = ("auto", "files", "generate", "full_body")

# Market-1501 / DukeMTMC-reID / CUHK03-NP (`PPPP_cC...`) and MARS (`PPPPCcT...`) names.
_ID_CAMERA = (re.compile(r"^(-1|\d+)_c(\d+)", re.I), re.compile(r"^(\d{4}|00-1)C(\d)T\d{4}F", re.I))

#: segmenter(image uint8 [H, W, 3]) -> mask uint8 [H, W] (0 / 255), e.g. segmenter.BodySegmenter.
Segmenter = Callable[[np.ndarray], np.ndarray]


def list_images(folder: str) -> list[str]:
    """Every image file under `folder` (recursively), sorted; mask folders
    (`*_seg`) and hidden files and folders are left out.

    Raises:
      DataError: the folder does not exist or holds no image.
    """
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise DataError(f"{folder}: image folder not found")
    found = []
    for root, dirs, files in os.walk(folder, followlinks=True):  # as the data readers do
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not d.endswith(MASK_SUFFIX))
        found.extend(os.path.join(root, f) for f in files if is_image_file(f))
    if not found:
        raise DataError(f"{folder}: no images found (looked for {', '.join(IMAGE_EXTENSIONS)} "
                        "in it and its subfolders)")
    return sorted(found)


def identity_of(path: str) -> tuple[int, int]:
    """(person id, camera) read off a file name; -1 where it says nothing.

    Market-1501, DukeMTMC-reID, CUHK03-NP and MARS names give both; otherwise
    a numeric parent folder is the id (`gallery/0007/x.jpg`) and a `_cN`
    token the camera.
    """
    name = os.path.basename(path)
    for pattern in _ID_CAMERA:
        match = pattern.match(name)
        if match:
            pid = match.group(1)
            return (-1 if pid in ("-1", "00-1") else int(pid)), int(match.group(2))
    parent = os.path.basename(os.path.dirname(path))
    pid = int(parent) if parent.isdigit() else -1
    camera = CAMERA_TOKEN.search(os.path.splitext(name)[0])
    return pid, int(camera.group(1)) if camera else -1


def mask_beside(image_path: str) -> Optional[str]:
    """`X_seg/NAME.png` for `X/NAME.jpg` when that file exists, else None."""
    candidate = default_mask_path(os.path.abspath(image_path))
    return candidate if os.path.isfile(candidate) else None


def generated_mask_path(image_path: str, cache_dir: str) -> str:
    """Where the generated mask of an image goes: one file per image path."""
    absolute = os.path.abspath(image_path)
    digest = hashlib.sha1(absolute.encode()).hexdigest()[:16]
    stem = os.path.splitext(os.path.basename(absolute))[0]
    return os.path.join(cache_dir, f"{stem}.{digest}.png")


def _write_generated(images: Sequence[str], targets: Sequence[str],
                     segmenter: Optional[Segmenter | str], model_path: Optional[str]) -> None:
    # TFLite segmenter, only when masks are made
    from mgcam_tf.segmentation import segmenter as segmentation_model
    from mgcam_tf.segmentation import writer

    # Masks made before (a rerun) are kept: the segmenter is not even loaded.
    todo = [(i, t) for i, t in zip(images, targets) if not os.path.exists(t)]
    if not todo:
        return
    images, targets = zip(*todo)
    if segmenter is None or isinstance(segmenter, str):
        # Batched or threaded by the segmenter; existing files are skipped.
        writer.write_masks(list(images), list(targets), model_path=model_path,
                           segmenter=segmenter)
        return
    for image_path, target in zip(images, targets):
        if os.path.exists(target):
            continue
        mask = np.asarray(segmenter(segmentation_model.decode_image(image_path)), np.uint8)
        if mask.ndim == 3:
            mask = mask[..., 0]
        data = writer.encode_png(mask)
        atomic_files.write_bytes(target, data, make_parents=True)




def check_mask_size(image_path: str, mask_path: str, name: str) -> None:
    """DataError unless the mask file has its image's height and width.

    Training and evaluation refuse a mask of another size; resizing it
    silently can flip a verdict. Sizes are read from the file headers.
    """
    import tensorflow as tf

    from mgcam_tf.serving.limits import encoded_sizes
    from mgcam_tf.serving.loader import read_files

    contents = read_files([image_path, mask_path], "image or mask")
    try:
        (ih, iw), (mh, mw) = encoded_sizes(tf.constant(contents)).numpy().tolist()
    except tf.errors.OpError:
        return       # an undecodable file: the embedding names it
    if (ih, iw) != (0, 0) and (mh, mw) != (0, 0) and (ih, iw) != (mh, mw):
        raise DataError(f"{name}={mask_path}: the mask is {mw}x{mh} but its image {image_path} "
                        f"is {iw}x{ih}; give the image's own mask (same size)")


def resolve_masks(image_paths: Sequence[str], policy: str = "auto", *,
                  given: Optional[Sequence[Optional[str]]] = None,
                  cache_dir: Optional[str] = None,
                  segmenter: Optional[Segmenter | str] = None,
                  model_path: Optional[str] = None,
                  in_graph: bool = False) -> list[Optional[str]]:
    """The mask file of each image (None: no mask, use an all-255 one).

    With `in_graph` (an export that makes masks itself) nothing is
    generated: the images whose mask would be get `MASK_IN_GRAPH`.

    Args:
      image_paths: image files.
      policy: one of MASK_POLICIES (module doc).
      given: masks the user named, one per image (None entries: not given);
        they win over every policy.
      cache_dir: where generated masks are written (created); needed when a
        mask is to be generated.
      segmenter: makes a mask from an image; or the name of one of
        `mgcam_tf.segmentation.choice.SEGMENTERS` ("blazepose": BlazePose's
        model, `model_path`, else $MGCAM_MASK_MODEL, else fetched;
        "distilled": the small network, `model_path` its weights); None:
        `choice.default_segmenter()` ($MGCAM_SEGMENTER, else the default).

    Raises:
      ConfigError: unknown policy, or generation needed without cache_dir.
      DataError: policy "files" and masks are missing, a given mask is
        missing, or the segmenter cannot run.
    """
    if policy not in MASK_POLICIES:
        raise ConfigError(f"mask policy must be one of {', '.join(MASK_POLICIES)}, got {policy!r}")
    given = list(given) if given is not None else [None] * len(image_paths)
    if len(given) != len(image_paths):
        raise ConfigError(f"{len(image_paths)} images but {len(given)} masks given")
    result: list[Optional[str]] = []
    to_make: list[int] = []
    for i, (image, mask) in enumerate(zip(image_paths, given)):
        if mask:
            if not os.path.isfile(mask):
                raise DataError(f"{mask}: mask file not found (given for {image})")
            result.append(mask)
            continue
        beside = None if policy == "generate" else mask_beside(image)
        result.append(beside)
        if beside is None and policy in ("auto", "generate"):
            to_make.append(i)
    if policy == "files":
        missing = [image_paths[i] for i, m in enumerate(result) if m is None]
        if missing:
            raise DataError(f"{len(missing)} image(s) have no mask beside them "
                            f"(X_seg/NAME.png), e.g. {missing[0]}; use mask policy 'auto' "
                            "to generate them")
    if to_make and in_graph:
        for i in to_make:
            result[i] = MASK_IN_GRAPH
    elif to_make:
        if cache_dir is None:
            raise ConfigError("masks must be generated but no folder was given for them")
        try:
            os.makedirs(cache_dir, exist_ok=True)
        except OSError as err:
            raise DataError(f"{cache_dir}: cannot create the mask folder ({err.strerror})") from None
        targets = [generated_mask_path(image_paths[i], cache_dir) for i in to_make]
        _write_generated([image_paths[i] for i in to_make], targets, segmenter, model_path)
        for i, target in zip(to_make, targets):
            result[i] = target
    return result
