"""SavedModel export for TF Serving: signatures, atomic versioned export, metadata.

An export is `EXPORT_BASE/VERSION/` (VERSION a positive integer), the layout
TF Serving's file-system source watches. It holds three signatures
(or seven, below; method `tensorflow/serving/predict`, tag `serve`, variable batch size N):

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

With the mask model in the graph (`mask_model_path`; mgcam-export's
default when `pose_landmark_full.tflite` is available), four more take the
image alone and make its mask with the recipe of SPEC §8 in TF ops
(`mgcam_tf.segmentation.graph_recipe`, `blazepose_graph`):

- `serving_image`: `image` uint8 [N, H, W, 3], the crops' own pixels, any
  H x W but one size per request -> `embedding`.
- `serving_image_bytes`: `image_bytes` string [N], encoded files of any
  sizes -> `embedding`.
- `serving_image_details`: as `serving_image`, plus `attention` (MGCAM)
  and `mask` uint8 [N, H, W, 1] (0/255, the crop's size).
- `serving_image_bytes_details`: as `serving_image_bytes`, plus `attention`
  and `mask_png` string [N] (each image's mask, PNG of its own size).

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
from mgcam_tf.data.preprocess import (
                                      decode_image, decode_mask, preprocess,
                                      resize_to_input)
from mgcam_tf.errors import ConfigError
from mgcam_tf import atomic_files

SIGNATURES = (SIGNATURE_DEFAULT, SIGNATURE_BYTES, SIGNATURE_RGBM)
MASK_IN_GRAPH_SIGNATURES = (SIGNATURE_IMAGE, SIGNATURE_IMAGE_BYTES, SIGNATURE_IMAGE_DETAILS,
                            SIGNATURE_IMAGE_BYTES_DETAILS)
METADATA_DIR = "assets.extra"
METADATA_FILE = "mgcam_export.json"
WARMUP_FILE = "tf_serving_warmup_requests"   # the name TF Serving looks for
WARMUP_BATCH_SIZES = (1, 4)
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
    checks = [rank_ok, size_ok, empty_ok]
    if tensor.dtype.is_floating:
        # NaN or Inf would come out as a plausible-looking embedding.
        checks.append(tf.debugging.Assert(
            tf.reduce_all(tf.math.is_finite(tensor)),
            [f"input {name} holds NaN or Inf values; it must be finite"]))
    with tf.control_dependencies(checks):
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
    """embedding [N, D] (and attention [N, 40, 16, 1] for MGCAM) of rgbm [N, 160, 64, 4],
    float32 whatever the model's dtype policy: the model's own inference path."""
    outputs = model.inference_outputs(rgbm)
    named = {OUTPUT_EMBEDDING: outputs["h_full"]}
    if "attention" in outputs:
        named[OUTPUT_ATTENTION] = outputs["attention"]
    return {k: tf.cast(v, tf.float32) for k, v in named.items()}


def _check_image_batch(tensor: tf.Tensor, name: str) -> tf.Tensor:
    """`tensor` after asserting that it is uint8 [N >= 1, H >= 1, W >= 1, 3] (any H, W)."""
    expected = "uint8 [N, H, W, 3] with N, H, W >= 1 (one size per request)"
    shape = tf.shape(tensor)
    rank_ok = tf.debugging.assert_equal(
        tf.size(shape), 4, message=f"input {name} must be {expected}; got a tensor of another rank")
    with tf.control_dependencies([rank_ok]):
        dims = tf.concat([shape, tf.zeros([4], tf.int32)], 0)[:4]
    channels_ok = tf.debugging.Assert(
        tf.equal(dims[3], 3),
        [tf.strings.format(f"input {name} must be {expected}; got shape {{}}", shape)])
    empty_ok = tf.debugging.Assert(
        tf.reduce_all(dims[:3] > 0),
        [tf.strings.format(f"input {name} is empty (shape {{}}); it must be {expected}", shape)])
    with tf.control_dependencies([rank_ok, channels_ok, empty_ok]):
        return tf.identity(tensor)


def _image_only_functions(model: Any, segmenter: Any) -> dict:
    """The signatures that make the mask in the graph (module doc); `segmenter`
    is a `mgcam_tf.segmentation.graph_masks` mask maker."""
    def finish(image, mask, details, extra):
        outputs = _network_outputs(model, preprocess(image, mask)["rgbm"])
        if not details:
            return {OUTPUT_EMBEDDING: outputs[OUTPUT_EMBEDDING]}
        return {**outputs, **extra}

    def pixels_fn(details):
        @tf.function(input_signature=[
            tf.TensorSpec([None, None, None, 3], tf.uint8, name=INPUT_IMAGE)])
        def serve_image(image):
            image = _check_image_batch(image, INPUT_IMAGE)
            mask = segmenter.crop_masks(image)
            return finish(image, mask, details, {OUTPUT_MASK: mask})
        return serve_image

    def bytes_fn(details):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=INPUT_IMAGE_BYTES)])
        def serve_image_bytes(image_bytes):
            image_bytes = _check_batch(image_bytes, INPUT_IMAGE_BYTES, (), "string")
            # Flattened so that the check itself stays valid on input of a
            # wrong rank (the rank check above names that error).
            flat = tf.reshape(image_bytes, [-1])
            with tf.control_dependencies(
                    [_check_encoded(flat, INPUT_IMAGE_BYTES, allow_empty=False)]):
                image_bytes = tf.identity(image_bytes)

            def prepare(data):
                # Files differ in size: each is brought to the segmenter's
                # input size on its own, then its network runs once on the batch.
                pixels = decode_image(data)
                canvas, geometry = segmenter.network_input(data, pixels)
                return canvas, resize_to_input(pixels), geometry

            canvas, image, geometry = tf.map_fn(prepare, image_bytes, fn_output_signature=(
                segmenter.input_spec,
                tf.TensorSpec([IMAGE_HEIGHT, IMAGE_WIDTH, 3], tf.uint8),
                tf.TensorSpec([6], tf.int32)))
            logits = segmenter.network(canvas)

            def crop_mask(args):
                one, g = args
                mask = segmenter.mask_of(one, g)
                png = tf.io.encode_png(mask) if details else tf.constant(b"")
                return resize_to_input(mask), png

            mask, png = tf.map_fn(crop_mask, (logits, geometry), fn_output_signature=(
                tf.TensorSpec([IMAGE_HEIGHT, IMAGE_WIDTH, 1], tf.uint8),
                tf.TensorSpec([], tf.string)))
            return finish(image, mask, details, {OUTPUT_MASK_PNG: png})
        return serve_image_bytes

    return {SIGNATURE_IMAGE: pixels_fn(False).get_concrete_function(),
            SIGNATURE_IMAGE_BYTES: bytes_fn(False).get_concrete_function(),
            SIGNATURE_IMAGE_DETAILS: pixels_fn(True).get_concrete_function(),
            SIGNATURE_IMAGE_BYTES_DETAILS: bytes_fn(True).get_concrete_function()}


def has_attention_output(model: Any) -> bool:
    """Whether the model's signatures have an `attention` output (MGCAM yes, MSCAN no)."""
    return getattr(model, "attention_mode", "none") != "none"


def serving_functions(model: Any, segmenter: Any = None
                      ) -> dict[str, tf.types.experimental.ConcreteFunction]:
    """The signatures of the module doc, as concrete functions of `model`.

    Args:
      model: a built `mgcam_tf.modeling.models.MGCAM` (or `MSCANBody`).
      segmenter: a `mgcam_tf.segmentation.graph_masks` mask maker to add the image-only signatures (`MASK_IN_GRAPH_SIGNATURES`); None:
        the three mask-taking ones only.

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

    functions = {SIGNATURE_DEFAULT: serve_pixels.get_concrete_function(),
                 SIGNATURE_BYTES: serve_bytes.get_concrete_function(),
                 SIGNATURE_RGBM: serve_rgbm.get_concrete_function()}
    if segmenter is not None:
        functions.update(_image_only_functions(model, segmenter))
    return functions


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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # another user's live process
        return True
    except OverflowError:
        return False
    return True


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
                stale = int(found.group(1)) != os.getpid() and not _pid_alive(int(found.group(1)))
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
                       segmenter: Optional[str] = None) -> pathlib.Path:
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
      segmenter: which network makes those masks
        (`mgcam_tf.segmentation.choice`): "blazepose" (`mask_model_path`
        the .tflite) or "distilled" (`mask_model_path` its weights file);
        None: the one `mask_model_path` is the model of
        (`mgcam_tf.segmentation.choice.for_model_file`).

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
    functions = serving_functions(model, masks)
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
        "attention_output": has_attention_output(model),
        "tensorflow_version": tf.__version__,
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
                     mask_model_path: Optional[os.PathLike] = None) -> pathlib.Path:
    """Exports the latest checkpoint of a training run (see `export_saved_model`).

    Raises:
      ConfigError: not a model directory, no checkpoint, or as `export_saved_model`.
    """
    from mgcam_tf.training import run_dir

    model = run_dir.load_trained_model(model_dir)
    info = {"model_dir": os.path.abspath(os.fspath(model_dir)),
            "model": run_dir.read_model_config(model_dir), **(metadata or {})}
    return export_saved_model(model, export_base, version, metadata=info,
                              mask_model_path=mask_model_path)


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
    "ATTENTION_SIZE",
]
