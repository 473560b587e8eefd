"""The export's signatures: input checks, bounds and the network's part, as concrete functions.

An export holds three signatures (or seven, below; method `tensorflow/serving/predict`, tag `serve`, variable batch size N):

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
image alone and make its mask with BlazePose-full's recipe (or the distilled network) in TF ops
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

Every signature is bounded (`mgcam_tf.serving.limits`): batch size, pixels
per image and per request, bytes per request, read before any decoding.
"""

from __future__ import annotations

from typing import Any, Optional

import tensorflow as tf

from mgcam_tf.conventions import (IMAGE_HEIGHT, IMAGE_WIDTH, INPUT_IMAGE,
                                  INPUT_IMAGE_BYTES, INPUT_MASK, INPUT_MASK_BYTES, INPUT_RGBM,
                                  OUTPUT_ATTENTION, OUTPUT_EMBEDDING, OUTPUT_MASK,
                                  OUTPUT_MASK_PNG, SIGNATURE_BYTES, SIGNATURE_DEFAULT,
                                  SIGNATURE_IMAGE, SIGNATURE_IMAGE_BYTES,
                                  SIGNATURE_IMAGE_BYTES_DETAILS, SIGNATURE_IMAGE_DETAILS,
                                  SIGNATURE_RGBM)
from mgcam_tf.data.preprocess import decode_image, decode_mask, preprocess, resize_to_input
from mgcam_tf.serving import limits as bounds
from mgcam_tf.serving.limits import ServingLimits

SIGNATURES = (SIGNATURE_DEFAULT, SIGNATURE_BYTES, SIGNATURE_RGBM)
MASK_IN_GRAPH_SIGNATURES = (SIGNATURE_IMAGE, SIGNATURE_IMAGE_BYTES, SIGNATURE_IMAGE_DETAILS,
                            SIGNATURE_IMAGE_BYTES_DETAILS)


# ==================================================================================
# Input checks inside the graph

def _runtime_rank(shape: tf.Tensor) -> tf.Tensor:
    """The rank of a tensor from its run-time shape, never folded to a constant.

    TF Serving feeds a request to the placeholder whatever its rank, but
    Grappler folds `tf.size(tf.shape(x))` to the placeholder's declared rank,
    which made the rank check vacuous (a rank-2 `image_bytes` reached the
    decoder: "In[0] should be a scalar"). A mask computed from the shape's
    values has no static length to fold.
    """
    return tf.size(tf.boolean_mask(shape, shape >= 0))


def _check_rank(shape: tf.Tensor, rank: int, expected: str) -> tf.Operation:
    return tf.debugging.Assert(tf.equal(_runtime_rank(shape), rank), [tf.strings.format(
        f"{expected}; got a tensor of another rank (shape {{}})", shape)])


def _check_batch(tensor: tf.Tensor, name: str, tail: tuple[int, ...], dtype: str,
                 limits: ServingLimits) -> tf.Tensor:
    """`tensor` after asserting, at run time, that it is [1 <= N <= max_batch, *tail]
    (float input: within the preprocessed range too).

    The checks are ops of the graph (not Python checks at trace time): TF
    Serving feeds request tensors to the signature's placeholders without
    looking at their shapes.
    """
    expected = f"{dtype} [{', '.join(['N', *map(str, tail)])}] with N >= 1"
    shape = tf.shape(tensor)
    rank_ok = _check_rank(shape, len(tail) + 1, f"input {name} must be {expected}")
    with tf.control_dependencies([rank_ok]):
        # Padding the shape keeps the slice valid for the message even when
        # the rank check above is what fails first.
        dims = tf.concat([shape, tf.zeros([len(tail) + 1], tf.int32)], 0)[:len(tail) + 1]
    size_ok = tf.debugging.Assert(
        tf.reduce_all(tf.equal(dims[1:], tf.constant(tail, tf.int32))),
        [tf.strings.format(f"input {name} must be {expected}; got shape {{}}", shape)])
    empty_ok = tf.debugging.Assert(
        dims[0] > 0, [f"input {name} is an empty batch; it must be {expected}"])
    with tf.control_dependencies([rank_ok]):
        batch_ok = bounds.check_batch_size(tensor, name, limits)
    checks = [rank_ok, size_ok, empty_ok, batch_ok]
    if tensor.dtype.is_floating:
        # NaN or Inf, or a value no image gives (3e38, -1e6), would come out
        # as a plausible-looking embedding.
        finite_ok = tf.debugging.Assert(
            tf.reduce_all(tf.math.is_finite(tensor)),
            [f"input {name} holds NaN or Inf values; it must be finite"])
        with tf.control_dependencies(checks + [finite_ok]):
            checks += [finite_ok, bounds.check_rgbm_range(tensor, name)]
    with tf.control_dependencies(checks):
        return tf.identity(tensor)


def _check_same_batch(a: tf.Tensor, a_name: str, b: tf.Tensor, b_name: str) -> tf.Operation:
    return tf.debugging.Assert(
        tf.equal(tf.shape(a)[0], tf.shape(b)[0]),
        [tf.strings.format(f"inputs {a_name} and {b_name} must hold as many elements; "
                           f"got {{}} and {{}}", (tf.shape(a)[0], tf.shape(b)[0]))])


def _check_encoded_batch(contents: tf.Tensor, name: str, limits: ServingLimits,
                         allow_empty: bool) -> tf.Tensor:
    """`contents` after asserting that it is string [1 <= N <= max_batch] of image
    files within the byte and pixel bounds (headers read, nothing decoded)."""
    checked = _check_batch(contents, name, (), "string", limits)
    # Flattened so that the checks stay valid on input of a wrong rank (the
    # rank check above names that error and runs first).
    flat = tf.reshape(checked, [-1])
    with tf.control_dependencies(bounds.check_encoded(flat, name, limits, allow_empty)):
        return tf.identity(checked)


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

def _network_outputs(model: Any, rgbm: tf.Tensor,
                     flip_average: bool = False) -> dict[str, tf.Tensor]:
    """embedding [N, D] (and attention [N, 40, 16, 1] for MGCAM) of rgbm [N, 160, 64, 4],
    float32 whatever the model's dtype policy: the model's own inference path.

    flip_average: the embedding is the mean of the image's and its mirror's, as
    `mgcam-eval --flip_average` computes it (the attention map is the image's own).
    """
    outputs = model.inference_outputs(rgbm)
    embedding = outputs["h_full"]
    if flip_average:
        embedding = (embedding + model.embed(tf.reverse(rgbm, axis=[2]))) / 2.0
    named = {OUTPUT_EMBEDDING: embedding}
    if "attention" in outputs:
        named[OUTPUT_ATTENTION] = outputs["attention"]
    return {k: tf.cast(v, tf.float32) for k, v in named.items()}


def _check_image_batch(tensor: tf.Tensor, name: str, limits: ServingLimits) -> tf.Tensor:
    """`tensor` after asserting that it is uint8 [N >= 1, H >= 1, W >= 1, 3] (any H, W)
    within the limits' batch and pixel bounds."""
    expected = "uint8 [N, H, W, 3] with N, H, W >= 1 (one size per request)"
    shape = tf.shape(tensor)
    rank_ok = _check_rank(shape, 4, f"input {name} must be {expected}")
    with tf.control_dependencies([rank_ok]):
        dims = tf.concat([shape, tf.zeros([4], tf.int32)], 0)[:4]
    channels_ok = tf.debugging.Assert(
        tf.equal(dims[3], 3),
        [tf.strings.format(f"input {name} must be {expected}; got shape {{}}", shape)])
    empty_ok = tf.debugging.Assert(
        tf.reduce_all(dims[:3] > 0),
        [tf.strings.format(f"input {name} is empty (shape {{}}); it must be {expected}", shape)])
    with tf.control_dependencies([rank_ok, channels_ok, empty_ok]):
        sized = bounds.check_pixels(tensor, name, limits)
    with tf.control_dependencies([rank_ok, channels_ok, empty_ok, *sized]):
        return tf.identity(tensor)


# Canvases the segmentation network sees at once. Measured on 2 CPU cores
# (benchmarks/bench_serving.py --hostile): 256 crops through serving_image_bytes
# in one network call took 3.8 GB above the loaded model; in chunks of 16 the
# peak is set by the chunk, not by the request.
SEGMENTER_CHUNK = 16


def _in_chunks(network: Any, canvas: tf.Tensor, chunk: int = SEGMENTER_CHUNK) -> tf.Tensor:
    """network(canvas) for the segmenter's inputs [N, ...], `chunk` at a time, in turn."""
    n = tf.shape(canvas)[0]
    starts = tf.range(0, n, chunk)

    def one(start):
        return network(canvas[start:start + chunk])

    first = one(0)
    out = tf.TensorArray(first.dtype, size=tf.size(starts), infer_shape=False,
                         element_shape=tf.TensorShape([None]).concatenate(first.shape[1:]))
    out = out.write(0, first)

    def body(i, out):
        return i + 1, out.write(i, one(starts[i]))

    # One chunk at a time: parallel iterations would hold several chunks' activations.
    _, out = tf.while_loop(lambda i, _: i < tf.size(starts), body, (tf.constant(1), out),
                           parallel_iterations=1)
    return out.concat()


def _image_only_functions(model: Any, segmenter: Any, limits: ServingLimits,
                          flip_average: bool = False) -> dict:
    """The signatures that make the mask in the graph (module doc); `segmenter` is a
    `mgcam_tf.segmentation.graph_masks` mask maker (BlazePose-full or the distilled network)."""
    def segment(canvas):
        return _in_chunks(segmenter.network, canvas)

    def finish(image, mask, details, extra):
        outputs = _network_outputs(model, preprocess(image, mask)["rgbm"], flip_average)
        if not details:
            return {OUTPUT_EMBEDDING: outputs[OUTPUT_EMBEDDING]}
        return {**outputs, **extra}

    def pixels_fn(details):
        @tf.function(input_signature=[
            tf.TensorSpec([None, None, None, 3], tf.uint8, name=INPUT_IMAGE)])
        def serve_image(image):
            image = _check_image_batch(image, INPUT_IMAGE, limits)
            mask = segmenter.crop_masks(image, network=segment)
            return finish(image, mask, details, {OUTPUT_MASK: mask})
        return serve_image

    def bytes_fn(details):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=INPUT_IMAGE_BYTES)])
        def serve_image_bytes(image_bytes):
            image_bytes = _check_encoded_batch(image_bytes, INPUT_IMAGE_BYTES, limits,
                                               allow_empty=False)

            def prepare(data):
                # Files differ in size: each is brought to the segmenter's
                # input size on its own, then its network runs on the batch.
                pixels = decode_image(data)
                canvas, geometry = segmenter.network_input(data, pixels)
                return canvas, resize_to_input(pixels), geometry

            canvas, image, geometry = tf.map_fn(prepare, image_bytes, fn_output_signature=(
                segmenter.input_spec,
                tf.TensorSpec([IMAGE_HEIGHT, IMAGE_WIDTH, 3], tf.uint8),
                tf.TensorSpec([6], tf.int32)))
            logits = segment(canvas)

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


def serving_functions(model: Any, segmenter: Any = None,
                      limits: Optional[ServingLimits] = None, flip_average: bool = False
                      ) -> dict[str, tf.types.experimental.ConcreteFunction]:
    """The signatures of the module doc, as concrete functions of `model`.

    Args:
      model: a built `mgcam_tf.modeling.models.MGCAM` (or `MSCANBody`).
      segmenter: a `mgcam_tf.segmentation.graph_masks` mask maker
        to add the image-only signatures (`MASK_IN_GRAPH_SIGNATURES`); None:
        the three mask-taking ones only.
      limits: the bounds on one request (None: `ServingLimits()`'s defaults).
      flip_average: every embedding is the mean of the image's and its mirror's.

    Returns:
      {signature name: concrete function}, each with a variable batch size.
    """
    height, width = IMAGE_HEIGHT, IMAGE_WIDTH
    limits = limits or ServingLimits()

    @tf.function(input_signature=[
        tf.TensorSpec([None, height, width, 3], tf.uint8, name=INPUT_IMAGE),
        tf.TensorSpec([None, height, width, 1], tf.uint8, name=INPUT_MASK)])
    def serve_pixels(image, mask):
        image = _check_batch(image, INPUT_IMAGE, (height, width, 3), "uint8", limits)
        mask = _check_batch(mask, INPUT_MASK, (height, width, 1), "uint8", limits)
        with tf.control_dependencies([_check_same_batch(image, INPUT_IMAGE, mask, INPUT_MASK)]):
            rgbm = preprocess(image, mask)["rgbm"]
        return _network_outputs(model, rgbm, flip_average)

    @tf.function(input_signature=[
        tf.TensorSpec([None], tf.string, name=INPUT_IMAGE_BYTES),
        tf.TensorSpec([None], tf.string, name=INPUT_MASK_BYTES)])
    def serve_bytes(image_bytes, mask_bytes):
        image_bytes = _check_encoded_batch(image_bytes, INPUT_IMAGE_BYTES, limits,
                                           allow_empty=False)
        mask_bytes = _check_encoded_batch(mask_bytes, INPUT_MASK_BYTES, limits,
                                          allow_empty=True)
        with tf.control_dependencies(
                [_check_same_batch(image_bytes, INPUT_IMAGE_BYTES, mask_bytes, INPUT_MASK_BYTES)]):
            image = _decode_resized(image_bytes, mask=False)
            mask = _decode_resized(mask_bytes, mask=True)
        rgbm = preprocess(image, mask)["rgbm"]
        return _network_outputs(model, rgbm, flip_average)

    @tf.function(input_signature=[
        tf.TensorSpec([None, height, width, 4], tf.float32, name=INPUT_RGBM)])
    def serve_rgbm(rgbm):
        rgbm = _check_batch(rgbm, INPUT_RGBM, (height, width, 4), "float32", limits)
        return _network_outputs(model, rgbm, flip_average)

    functions = {SIGNATURE_DEFAULT: serve_pixels.get_concrete_function(),
                 SIGNATURE_BYTES: serve_bytes.get_concrete_function(),
                 SIGNATURE_RGBM: serve_rgbm.get_concrete_function()}
    if segmenter is not None:
        functions.update(_image_only_functions(model, segmenter, limits, flip_average))
    return functions
