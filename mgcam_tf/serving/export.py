"""SavedModel export for TF Serving: signatures, atomic versioned export, metadata.

An export is `EXPORT_BASE/VERSION/` (VERSION a positive integer), the layout
TF Serving's file-system source watches. It holds the signatures of
`mgcam_tf.serving.signatures` (three, or seven with the mask model in the
graph), each bounded by `mgcam_tf.serving.limits`.

Beside the SavedModel, `assets.extra/mgcam_export.json` (TF Serving copies
nothing from `assets.extra`; it is the SavedModel's place for extra files)
records the model config, the signatures and, when calibrated, the
verification threshold (`mgcam_tf.retrieval.verification`).

`assets.extra/tf_serving_warmup_requests` (TF Serving's warmup file: a
TFRecord of PredictionLog protos) holds requests of 1 and 4 images for
every signature. TF Serving replays them when it loads the version, before
it reports AVAILABLE, so the graph's first (slow) run is not a user's
request. Written when `tensorflow_serving.apis` is importable
(`pip install --no-deps tensorflow-serving-api`); the metadata's `warmup`
field says whether it was.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import tempfile
from typing import Any, Optional

import tensorflow as tf

from mgcam_tf.conventions import (ATTENTION_SIZE, IMAGE_HEIGHT, IMAGE_WIDTH, INPUT_IMAGE,
                                  INPUT_IMAGE_BYTES, INPUT_MASK, INPUT_MASK_BYTES, INPUT_RGBM,
                                  OUTPUT_ATTENTION, OUTPUT_EMBEDDING, OUTPUT_MASK,
                                  OUTPUT_MASK_PNG, PREDICT_METHOD, SERVING_TAG,
                                  SIGNATURE_BYTES, SIGNATURE_DEFAULT, SIGNATURE_IMAGE,
                                  SIGNATURE_IMAGE_BYTES, SIGNATURE_IMAGE_BYTES_DETAILS,
                                  SIGNATURE_IMAGE_DETAILS, SIGNATURE_RGBM)
from mgcam_tf.data.preprocess import preprocess
from mgcam_tf.errors import ConfigError
from mgcam_tf import atomic_files, process_lock
from mgcam_tf.serving.limits import ServingLimits
from mgcam_tf.serving.signatures import (MASK_IN_GRAPH_SIGNATURES, SIGNATURES,
                                         has_attention_output, serving_functions)

METADATA_DIR = "assets.extra"
METADATA_FILE = "mgcam_export.json"
WARMUP_FILE = "tf_serving_warmup_requests"   # the name TF Serving looks for
WARMUP_BATCH_SIZES = (1, 4)
FORMAT_VERSION = 1

# ==================================================================================
# Writing an export

def _versions(export_base: pathlib.Path) -> list[int]:
    if not export_base.is_dir():
        return []
    return sorted(int(p.name) for p in export_base.iterdir()
                  if p.name.isdigit() and p.is_dir() and int(p.name) > 0)


def next_version(export_base: os.PathLike) -> int:
    """1 + the highest version under `export_base` (1 when there is none)."""
    versions = _versions(pathlib.Path(export_base))
    return versions[-1] + 1 if versions else 1


def resolve_export(path: os.PathLike) -> pathlib.Path:
    """The SavedModel folder of `path`: `path` itself when it holds
    `saved_model.pb`, else its highest-numbered version subfolder (what TF
    Serving would serve).

    Raises:
      ConfigError: neither.
    """
    path = pathlib.Path(path)
    if (path / "saved_model.pb").is_file():
        return path
    versions = _versions(path)
    if not path.is_dir():
        raise ConfigError(f"{path}: export folder not found")
    if not versions:
        raise ConfigError(f"{path}: holds no SavedModel (no saved_model.pb, no numbered "
                          "version folder); make one with mgcam-export")
    return path / str(versions[-1])


STALE_UNNAMED_EXPORT_SECONDS = 24 * 3600


def remove_stale_exports(export_base: os.PathLike) -> list[pathlib.Path]:
    """Removes the temporary folders (`.N.tmp-PID-*`) of exports killed mid-write.

    A folder whose pid is no longer running is removed; one of a live pid
    (an export running now) is kept. Folders of the older naming
    (`.N.tmp-XXXX`, no pid) are removed once a day old. Returns what was removed.
    """
    import re
    import time

    removed = []
    base = pathlib.Path(export_base)
    if not base.is_dir():
        return removed
    for leftover in base.glob(".*.tmp-*"):
        found = re.fullmatch(r"\.\d+\.tmp-(\d+)-.*", leftover.name)
        try:
            if found:
                stale = (int(found.group(1)) != os.getpid()
                         and not process_lock.pid_alive(int(found.group(1))))
            else:
                stale = time.time() - leftover.stat().st_mtime > STALE_UNNAMED_EXPORT_SECONDS
        except OSError:
            continue
        if stale and leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
            removed.append(leftover)
    return removed


def export_saved_model(model: Any, export_base: os.PathLike, version: Optional[int] = None,
                       *, metadata: Optional[dict] = None,
                       mask_model_path: Optional[os.PathLike] = None,
                       limits: Optional[ServingLimits] = None,
                       segmenter: Optional[str] = None,
                       flip_average: bool = False) -> pathlib.Path:
    """Writes `model`'s signatures to `export_base/VERSION/`, complete or not at all.

    The SavedModel is written to a hidden temporary folder beside the version
    folder and renamed onto it: TF Serving (which serves only numbered
    folders) and readers never see a half-written export.

    Args:
      model: a built `mgcam_tf.modeling.models.MGCAM` or `MSCANBody`.
      export_base: the folder TF Serving watches (created if missing).
      version: positive integer; None: `next_version(export_base)`.
      metadata: extra JSON-able fields for `assets.extra/mgcam_export.json`.
      mask_model_path: the verified `pose_landmark_full.tflite`
        (`mgcam_tf.segmentation.model_file.resolve_model_path`): its
        segmentation network goes into the graph, with the image-only
        signatures. None: the mask-taking signatures only.
      limits: the bounds on one request (`mgcam_tf.serving.limits`), recorded
        in the metadata's `limits`; None: the defaults.
      segmenter: which network makes those masks
        (`mgcam_tf.segmentation.choice`): "blazepose" (`mask_model_path`
        the .tflite) or "distilled" (`mask_model_path` its weights file);
        None: the one `mask_model_path` is the model of
        (`mgcam_tf.segmentation.choice.for_model_file`).
      flip_average: bake the mirror average into every signature (each
        embedding the mean of the image's and its mirror's, as `mgcam-eval
        --flip_average`); recorded in the metadata's `flip_average`.

    Returns:
      The version folder.

    Raises:
      ConfigError: the version exists already or is not positive, or the
        folder cannot be written.
    """
    export_base = pathlib.Path(export_base)
    if version is None:
        version = next_version(export_base)
    if int(version) < 1:
        raise ConfigError(f"export version must be a positive integer, got {version}")
    target = export_base / str(int(version))
    if target.exists():
        raise ConfigError(f"{target} exists already: choose another --version or "
                          "leave it out to use the next free one")
    try:
        export_base.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"{export_base}: cannot create the export folder ({err.strerror})") \
            from None
    masks = None
    mask_info = {}
    if mask_model_path is not None:
        from mgcam_tf.segmentation import graph_masks

        masks = graph_masks.graph_masks(segmenter, mask_model_path)
        mask_info = {"mask_in_graph": masks.metadata}
    limits = limits or ServingLimits()
    functions = serving_functions(model, masks, limits, flip_average=flip_average)
    # Only the variables are tracked, not the Keras objects: the SavedModel
    # then loads anywhere without mgcam_tf (or Keras) being importable.
    root = tf.Module(name="mgcam_serving")
    root.model_variables = [getattr(v, "value", v) for v in model.variables]
    if masks is not None:
        root.mask_variables = masks.variables
    for name, fn in functions.items():
        setattr(root, name, fn)
    info = {
        "format_version": FORMAT_VERSION,
        "version": int(version),
        "signatures": signature_summary(functions),
        "feature": "h_full",
        "flip_average": bool(flip_average),
        "attention_output": has_attention_output(model),
        "tensorflow_version": tf.__version__,
        "limits": limits.as_dict(),
        **mask_info,
        **(metadata or {}),
    }
    remove_stale_exports(export_base)
    # The pid in the name tells a later export whether this one is still running.
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{int(version)}.tmp-{os.getpid()}-",
                                        dir=export_base))
    try:
        tf.saved_model.save(root, str(tmp), signatures=functions)
        info["warmup"] = write_warmup_file(tmp, list(functions))
        (tmp / METADATA_DIR).mkdir(exist_ok=True)
        (tmp / METADATA_DIR / METADATA_FILE).write_text(
            json.dumps(info, indent=2, sort_keys=True) + "\n")
        # mkdtemp makes the folder private (0700); a serving container running
        # as another user must be able to read the export.
        os.chmod(tmp, 0o755)
        # rename() onto a missing folder is atomic; a folder that appeared
        # meanwhile (another export) makes it fail instead of merging.
        os.rename(tmp, target)
    except OSError as err:
        raise ConfigError(f"{target}: cannot write the export ({err})") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _warmup_inputs(signature: str, batch: int) -> dict:
    """Inputs of a real-looking request of `batch` images to `signature`.

    Random pixels of a fixed seed: warmup exercises the graph (decoders,
    resizes, the network), not the answers.
    """
    import numpy as np

    rng = np.random.RandomState(batch)
    crops = rng.randint(0, 256, size=(batch, IMAGE_HEIGHT, IMAGE_WIDTH, 3)).astype(np.uint8)
    masks = np.zeros((batch, IMAGE_HEIGHT, IMAGE_WIDTH, 1), np.uint8)
    masks[:, 20:150, 12:52] = 255
    # Encoded images of another size than the input's, so the resize runs too.
    big = rng.randint(0, 256, size=(256, 128, 3)).astype(np.uint8)
    jpeg = tf.io.encode_jpeg(big).numpy()
    png_mask = tf.io.encode_png(np.full((256, 128, 1), 255, np.uint8)).numpy()
    if signature == SIGNATURE_DEFAULT:
        return {INPUT_IMAGE: crops, INPUT_MASK: masks}
    if signature == SIGNATURE_BYTES:
        return {INPUT_IMAGE_BYTES: np.array([jpeg] * batch, object),
                INPUT_MASK_BYTES: np.array([png_mask] * batch, object)}
    if signature == SIGNATURE_RGBM:
        return {INPUT_RGBM: preprocess(tf.constant(crops), tf.constant(masks))["rgbm"].numpy()}
    if signature in (SIGNATURE_IMAGE, SIGNATURE_IMAGE_DETAILS):
        return {INPUT_IMAGE: np.repeat(big[None], batch, axis=0)}
    if signature in (SIGNATURE_IMAGE_BYTES, SIGNATURE_IMAGE_BYTES_DETAILS):
        return {INPUT_IMAGE_BYTES: np.array([jpeg] * batch, object)}
    raise ValueError(f"no warmup inputs for signature {signature!r}")


def warmup_records(signatures: list[str]) -> list[bytes] | None:
    """Serialised PredictionLog protos (TF Serving's warmup format), or None without
    `tensorflow_serving.apis`."""
    try:
        from tensorflow_serving.apis import predict_pb2, prediction_log_pb2
    except ImportError:
        return None
    records = []
    for signature in signatures:
        for batch in WARMUP_BATCH_SIZES:
            request = predict_pb2.PredictRequest()
            request.model_spec.signature_name = signature
            for name, value in _warmup_inputs(signature, batch).items():
                request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request))
            records.append(log.SerializeToString())
    return records


def write_warmup_file(export_dir: os.PathLike, signatures: list[str]) -> bool:
    """Writes `assets.extra/tf_serving_warmup_requests`; False when the protos are missing."""
    records = warmup_records(signatures)
    if records is None:
        return False
    path = pathlib.Path(export_dir) / METADATA_DIR / WARMUP_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = pathlib.Path(tempfile.mkdtemp(dir=path.parent)) / WARMUP_FILE
    try:
        with tf.io.TFRecordWriter(str(buffer)) as writer:
            for record in records:
                writer.write(record)
        atomic_files.write_bytes(path, buffer.read_bytes())
    finally:
        shutil.rmtree(buffer.parent, ignore_errors=True)
    return True


def signature_summary(functions: dict) -> dict:
    """{signature: {"inputs": {name: [dtype, shape]}, "outputs": {...}}} (shape -1 = any)."""
    def describe(specs: dict) -> dict:
        return {name: [spec.dtype.name, [-1 if d is None else d for d in spec.shape.as_list()]]
                for name, spec in specs.items()}

    summary = {}
    for name, fn in functions.items():
        args, kwargs = fn.structured_input_signature
        inputs = {spec.name: spec for spec in args} | dict(kwargs)
        summary[name] = {"inputs": describe(inputs), "outputs": describe(fn.structured_outputs)}
    return summary


def export_model_dir(model_dir: os.PathLike, export_base: os.PathLike,
                     version: Optional[int] = None, *,
                     metadata: Optional[dict] = None,
                     mask_model_path: Optional[os.PathLike] = None,
                     limits: Optional[ServingLimits] = None,
                     flip_average: bool = False,
                     segmenter: Optional[str] = None) -> pathlib.Path:
    """Exports the latest checkpoint of a training run (see `export_saved_model`).

    Raises:
      ConfigError: not a model directory, no checkpoint, or as `export_saved_model`.
    """
    from mgcam_tf.training import run_dir

    model = run_dir.load_trained_model(model_dir, allow_older=False)
    info = {"model_dir": os.path.abspath(os.fspath(model_dir)),
            "model": run_dir.read_model_config(model_dir), **(metadata or {})}
    return export_saved_model(model, export_base, version, metadata=info,
                              mask_model_path=mask_model_path, limits=limits,
                              flip_average=flip_average, segmenter=segmenter)


def export_fingerprint(version_dir: os.PathLike) -> str:
    """Identifies an export's weights: sha1 of its graph and variables index.

    The one rule: feature folders, indexes and `--features` files record it,
    and every reader compares it, without loading the model.
    """
    import hashlib

    digest = hashlib.sha1()
    for name in ("saved_model.pb", "variables/variables.index"):
        path = pathlib.Path(version_dir, name)
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def read_metadata(export_dir: os.PathLike) -> dict:
    """The `assets.extra/mgcam_export.json` of an export ({} when it has none).

    `export_dir` may be the base folder (its latest version is read).
    """
    path = resolve_export(export_dir) / METADATA_DIR / METADATA_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path}: not readable JSON ({err})") from None


def write_metadata(export_dir: os.PathLike, updates: dict) -> pathlib.Path:
    """Merges `updates` into an export's metadata file (atomic rename).

    Used to store a verification threshold calibrated after the export.
    The SavedModel itself is not touched.
    """

    folder = resolve_export(export_dir)
    payload = {**read_metadata(folder), **updates}
    path = folder / METADATA_DIR / METADATA_FILE
    atomic_files.write_json(path, payload, make_parents=True)
    return path


__all__ = [
    "SIGNATURE_DEFAULT", "SIGNATURE_BYTES", "SIGNATURE_RGBM", "SIGNATURES",
    "SIGNATURE_IMAGE", "SIGNATURE_IMAGE_BYTES", "SIGNATURE_IMAGE_DETAILS",
    "SIGNATURE_IMAGE_BYTES_DETAILS", "MASK_IN_GRAPH_SIGNATURES", "OUTPUT_MASK", "OUTPUT_MASK_PNG",
    "INPUT_IMAGE", "INPUT_MASK", "INPUT_IMAGE_BYTES", "INPUT_MASK_BYTES", "INPUT_RGBM",
    "OUTPUT_EMBEDDING", "OUTPUT_ATTENTION", "SERVING_TAG", "PREDICT_METHOD",
    "serving_functions", "export_saved_model", "export_model_dir", "next_version",
    "resolve_export", "read_metadata", "write_metadata", "has_attention_output",
    "export_fingerprint",
    "ATTENTION_SIZE", "ServingLimits",
]
