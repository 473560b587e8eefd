"""SavedModel export for TF Serving: signatures, atomic versioned export, metadata.

An export is `EXPORT_BASE/VERSION/` (VERSION a positive integer), the layout
TF Serving's file-system source watches. It holds three signatures
(method `tensorflow/serving/predict`, tag `serve`, variable batch size N):

- `serving_default`: `image` uint8 [N, 160, 64, 3] RGB and `mask` uint8
  [N, 160, 64, 1] (0 background .. 255 body) -> `embedding` float32 [N, D]
  (h_full, D = 128) and, for MGCAM, `attention` float32 [N, 40, 16, 1]
  (Phi+). The MSCAN-body baseline has no attention branch: its signatures
  have `embedding` alone.
- `serving_bytes`: `image_bytes` string [N] and `mask_bytes` string [N],
  encoded files (JPEG, PNG, BMP or GIF; any size, decoded and resized to
  160x64 in the graph; an empty `mask_bytes` element means "no mask": an
  all-255 mask, the data pipeline's `full_body` policy) -> the same outputs.
  For REST clients that send `{"b64": ...}`.
- `serving_rgbm`: `rgbm` float32 [N, 160, 64, 4], input already through
  `preprocess` -> the same outputs (what `mgcam-eval` and the evaluation
  pipeline feed).

The preprocessing in the graph is `mgcam_tf.data.preprocess.preprocess`
itself, the function training and evaluation use. The signatures run only
what their outputs need: stem, stages 1-2 and the full stream for
`embedding` (`MGCAM.embed`'s path), plus the 3x3 attention convolution for
`attention`; the body and background streams are never computed.

Bad input is answered with an `InvalidArgument` error whose message says
what was expected (rank, size, channels, at least one image, decodable
bytes), checked in the graph so that TF Serving, which feeds tensors to the
graph without checking their shapes, reports it too.

Beside the SavedModel, `assets.extra/mgcam_export.json` (TF Serving copies
nothing from `assets.extra`; it is the SavedModel's place for extra files)
records the model config, the signatures and, when calibrated, the
verification threshold (`mgcam_tf.verification`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
import tempfile
from typing import Any, Optional

import tensorflow as tf

from mgcam_tf.data.preprocess import (ATTENTION_SIZE, IMAGE_HEIGHT, IMAGE_WIDTH,
                                      decode_image, decode_mask, preprocess,
                                      resize_to_input)
from mgcam_tf.errors import ConfigError

# -- the contract of the exported signatures --------------------------------------
SIGNATURE_DEFAULT = "serving_default"
SIGNATURE_BYTES = "serving_bytes"
SIGNATURE_RGBM = "serving_rgbm"
SIGNATURES = (SIGNATURE_DEFAULT, SIGNATURE_BYTES, SIGNATURE_RGBM)
INPUT_IMAGE = "image"
INPUT_MASK = "mask"
INPUT_IMAGE_BYTES = "image_bytes"
INPUT_MASK_BYTES = "mask_bytes"
INPUT_RGBM = "rgbm"
OUTPUT_EMBEDDING = "embedding"
OUTPUT_ATTENTION = "attention"
SERVING_TAG = "serve"
PREDICT_METHOD = "tensorflow/serving/predict"

METADATA_DIR = "assets.extra"
METADATA_FILE = "mgcam_export.json"
FORMAT_VERSION = 1

# First bytes of the formats tf.io.decode_image reads: anything else is
# refused with a message naming the element before the decoder sees it.
_MAGIC = (b"\xff\xd8\xff", b"\x89PNG", b"BM", b"GIF8")


# ==================================================================================
# Input checks inside the graph

def _check_batch(tensor: tf.Tensor, name: str, tail: tuple[int, ...], dtype: str) -> tf.Tensor:
    """`tensor` after asserting, at run time, that it is [N >= 1, *tail].

    The checks are ops of the graph (not Python checks at trace time): TF
    Serving feeds request tensors to the signature's placeholders without
    looking at their shapes.
    """
    expected = f"{dtype} [{', '.join(['N', *map(str, tail)])}] with N >= 1"
    shape = tf.shape(tensor)
    rank_ok = tf.debugging.assert_equal(
        tf.size(shape), len(tail) + 1,
        message=f"input {name} must be {expected}; got a tensor of another rank")
    with tf.control_dependencies([rank_ok]):
        # Padding the shape keeps the slice valid for the message even when
        # the rank check above is what fails first.
        dims = tf.concat([shape, tf.zeros([len(tail) + 1], tf.int32)], 0)[:len(tail) + 1]
    size_ok = tf.debugging.Assert(
        tf.reduce_all(tf.equal(dims[1:], tf.constant(tail, tf.int32))),
        [tf.strings.format(f"input {name} must be {expected}; got shape {{}}", shape)])
    empty_ok = tf.debugging.Assert(
        dims[0] > 0, [f"input {name} is an empty batch; it must be {expected}"])
    with tf.control_dependencies([rank_ok, size_ok, empty_ok]):
        return tf.identity(tensor)


def _check_same_batch(a: tf.Tensor, a_name: str, b: tf.Tensor, b_name: str) -> tf.Operation:
    return tf.debugging.Assert(
        tf.equal(tf.shape(a)[0], tf.shape(b)[0]),
        [tf.strings.format(f"inputs {a_name} and {b_name} must hold as many elements; "
                           f"got {{}} and {{}}", (tf.shape(a)[0], tf.shape(b)[0]))])


def _check_encoded(contents: tf.Tensor, name: str, allow_empty: bool) -> tf.Operation:
    """Asserts that every element of string [N] looks like a JPEG/PNG/BMP/GIF file."""
    head = tf.strings.substr(contents, 0, 4)
    known = tf.zeros_like(contents, dtype=tf.bool)
    for magic in _MAGIC:
        known |= tf.equal(tf.strings.substr(head, 0, len(magic)), magic)
    if allow_empty:
        known |= tf.equal(tf.strings.length(contents), 0)
    first_bad = tf.argmin(tf.cast(known, tf.int32), output_type=tf.int32)
    allowed = "a JPEG, PNG, BMP or GIF file" + (" (or empty: no mask)" if allow_empty else "")
    return tf.debugging.Assert(
        tf.reduce_all(known),
        [tf.strings.format(f"input {name}[{{}}] is not {allowed}", first_bad)])


def _decode_resized(contents: tf.Tensor, mask: bool) -> tf.Tensor:
    """string [N] -> uint8 [N, 160, 64, C]: each file decoded and resized on its own
    (files differ in size), with the resize `preprocess` would do."""
    def one(data):
        if not mask:
            return resize_to_input(decode_image(data))
        # An empty element means no mask: all body, as missing_masks="full_body".
        return tf.cond(tf.strings.length(data) > 0,
                       lambda: resize_to_input(decode_mask(data)),
                       lambda: tf.fill([IMAGE_HEIGHT, IMAGE_WIDTH, 1], tf.constant(255, tf.uint8)))

    channels = 1 if mask else 3
    return tf.map_fn(one, contents, fn_output_signature=tf.TensorSpec(
        [IMAGE_HEIGHT, IMAGE_WIDTH, channels], tf.uint8))


# ==================================================================================
# The network's part of a signature

def _network_outputs(model: Any, rgbm: tf.Tensor) -> dict[str, tf.Tensor]:
    """embedding [N, D] (and attention [N, 40, 16, 1] for MGCAM) of rgbm [N, 160, 64, 4].

    The same layers, in the same order, as `model(rgbm)["h_full"]` /
    `["attention"]`, without the body and background streams.
    """
    features = model.stage2_features(rgbm, training=False)
    outputs = {OUTPUT_EMBEDDING: model.full_stream(features, training=False)[0]}
    mode = getattr(model, "attention_mode", "none")
    if mode == "soft":
        outputs[OUTPUT_ATTENTION] = model.attention(features)[2]
    elif mode == "hard":
        from mgcam_tf.models import binary_mask_at_features

        outputs[OUTPUT_ATTENTION] = model.attention(
            [features, binary_mask_at_features(rgbm)])[2]
    # A model trained under a mixed-precision policy computes in float16 or
    # bfloat16; the serving contract is float32 whatever the policy.
    return {k: tf.cast(v, tf.float32) for k, v in outputs.items()}


def has_attention_output(model: Any) -> bool:
    """Whether the model's signatures have an `attention` output (MGCAM yes, MSCAN no)."""
    return getattr(model, "attention_mode", "none") != "none"


def serving_functions(model: Any) -> dict[str, tf.types.experimental.ConcreteFunction]:
    """The three signatures of the module doc, as concrete functions of `model`.

    Args:
      model: a built `mgcam_tf.models.MGCAM` (or `MSCANBody`).

    Returns:
      {signature name: concrete function}, each with a variable batch size.
    """
    height, width = IMAGE_HEIGHT, IMAGE_WIDTH

    @tf.function(input_signature=[
        tf.TensorSpec([None, height, width, 3], tf.uint8, name=INPUT_IMAGE),
        tf.TensorSpec([None, height, width, 1], tf.uint8, name=INPUT_MASK)])
    def serve_pixels(image, mask):
        image = _check_batch(image, INPUT_IMAGE, (height, width, 3), "uint8")
        mask = _check_batch(mask, INPUT_MASK, (height, width, 1), "uint8")
        with tf.control_dependencies([_check_same_batch(image, INPUT_IMAGE, mask, INPUT_MASK)]):
            rgbm = preprocess(image, mask)["rgbm"]
        return _network_outputs(model, rgbm)

    @tf.function(input_signature=[
        tf.TensorSpec([None], tf.string, name=INPUT_IMAGE_BYTES),
        tf.TensorSpec([None], tf.string, name=INPUT_MASK_BYTES)])
    def serve_bytes(image_bytes, mask_bytes):
        image_bytes = _check_batch(image_bytes, INPUT_IMAGE_BYTES, (), "string")
        mask_bytes = _check_batch(mask_bytes, INPUT_MASK_BYTES, (), "string")
        checks = [_check_same_batch(image_bytes, INPUT_IMAGE_BYTES, mask_bytes, INPUT_MASK_BYTES),
                  _check_encoded(image_bytes, INPUT_IMAGE_BYTES, allow_empty=False),
                  _check_encoded(mask_bytes, INPUT_MASK_BYTES, allow_empty=True)]
        with tf.control_dependencies(checks):
            image = _decode_resized(image_bytes, mask=False)
            mask = _decode_resized(mask_bytes, mask=True)
        rgbm = preprocess(image, mask)["rgbm"]
        return _network_outputs(model, rgbm)

    @tf.function(input_signature=[
        tf.TensorSpec([None, height, width, 4], tf.float32, name=INPUT_RGBM)])
    def serve_rgbm(rgbm):
        rgbm = _check_batch(rgbm, INPUT_RGBM, (height, width, 4), "float32")
        return _network_outputs(model, rgbm)

    return {SIGNATURE_DEFAULT: serve_pixels.get_concrete_function(),
            SIGNATURE_BYTES: serve_bytes.get_concrete_function(),
            SIGNATURE_RGBM: serve_rgbm.get_concrete_function()}


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


def export_saved_model(model: Any, export_base: os.PathLike, version: Optional[int] = None,
                       *, metadata: Optional[dict] = None) -> pathlib.Path:
    """Writes `model`'s signatures to `export_base/VERSION/`, complete or not at all.

    The SavedModel is written to a hidden temporary folder beside the version
    folder and renamed onto it: TF Serving (which serves only numbered
    folders) and readers never see a half-written export.

    Args:
      model: a built `mgcam_tf.models.MGCAM` or `MSCANBody`.
      export_base: the folder TF Serving watches (created if missing).
      version: positive integer; None: `next_version(export_base)`.
      metadata: extra JSON-able fields for `assets.extra/mgcam_export.json`.

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
    functions = serving_functions(model)
    # Only the variables are tracked, not the Keras objects: the SavedModel
    # then loads anywhere without mgcam_tf (or Keras) being importable.
    root = tf.Module(name="mgcam_serving")
    root.model_variables = [getattr(v, "value", v) for v in model.variables]
    for name, fn in functions.items():
        setattr(root, name, fn)
    info = {
        "format_version": FORMAT_VERSION,
        "version": int(version),
        "signatures": signature_summary(functions),
        "feature": "h_full",
        "attention_output": has_attention_output(model),
        "tensorflow_version": tf.__version__,
        **(metadata or {}),
    }
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{int(version)}.tmp-", dir=export_base))
    try:
        tf.saved_model.save(root, str(tmp), signatures=functions)
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
                     metadata: Optional[dict] = None) -> pathlib.Path:
    """Exports the latest checkpoint of a training run (see `export_saved_model`).

    Raises:
      ConfigError: not a model directory, no checkpoint, or as `export_saved_model`.
    """
    from mgcam_tf import training  # the trainer's module, only when a run is exported

    model = training.load_trained_model(model_dir)
    config = training.read_model_config(model_dir)
    info = {"model_dir": os.path.abspath(os.fspath(model_dir)),
            "model": dataclasses.asdict(config), **(metadata or {})}
    return export_saved_model(model, export_base, version, metadata=info)


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
    from mgcam_tf.training import write_json_atomic

    folder = resolve_export(export_dir)
    payload = {**read_metadata(folder), **updates}
    path = folder / METADATA_DIR / METADATA_FILE
    write_json_atomic(path, payload)
    return path


__all__ = [
    "SIGNATURE_DEFAULT", "SIGNATURE_BYTES", "SIGNATURE_RGBM", "SIGNATURES",
    "INPUT_IMAGE", "INPUT_MASK", "INPUT_IMAGE_BYTES", "INPUT_MASK_BYTES", "INPUT_RGBM",
    "OUTPUT_EMBEDDING", "OUTPUT_ATTENTION", "SERVING_TAG", "PREDICT_METHOD",
    "serving_functions", "export_saved_model", "export_model_dir", "next_version",
    "resolve_export", "read_metadata", "write_metadata", "has_attention_output",
    "ATTENTION_SIZE",
]
