"""What one request to an exported model may hold, checked in the graph before any work.

A served model must survive any single request: a decompression bomb (a
514 KB black 23000x23000 PNG decodes to 1.6 GB of pixels, and the mask
recipe's resize used to turn it into float32 too) or a request of thousands
of images would otherwise take the serving process down. Each signature
therefore refuses, with an `InvalidArgument` error that names the input
element and its size,

- a batch of more than `max_batch` elements (every signature);
- an encoded image whose header announces more than `max_image_pixels`
  pixels, read from the header before anything is decoded (JPEG: the SOF
  marker through `tf.image.extract_jpeg_shape`; PNG: the IHDR chunk; GIF:
  the logical screen; BMP: the info header);
- a request whose images hold more than `max_request_pixels` pixels in
  all, or whose encoded elements weigh more than `max_request_bytes` bytes
  in all;
- (float `rgbm` input) values outside what `preprocess` can produce.

The bounds are set at export (`mgcam-export --max_batch ...`) and recorded
in the export's metadata (`limits`). The defaults admit every real
pedestrian crop and camera frame: an 8K UHD frame is 7680x4320 = 33.2 MP,
a 36 MP photograph (6000x6000) passes; a batch of 256 is what the
benchmarks and `mgcam-eval` send. Memory is then bounded by the bounds,
not by the request: see docs/SERVING.md ("Bounds on a request") for the
measured figures.
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from mgcam_tf.conventions import IMAGE_SCALE, MASK_MEAN, MASK_SCALE, RGB_MEAN
from mgcam_tf.errors import ConfigError

# First bytes of the formats tf.io.decode_image reads.
JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG"
BMP_MAGIC = b"BM"
GIF_MAGIC = b"GIF8"
MAGIC = (JPEG_MAGIC, PNG_MAGIC, BMP_MAGIC, GIF_MAGIC)

# preprocess maps uint8 0..255 to (x - mean) / scale per channel; anything
# farther out than float32 rounding cannot come from an image.
_RANGE_SLACK = 1e-3
RGBM_LOW = tuple((0.0 - m) / IMAGE_SCALE for m in RGB_MEAN) + ((0.0 - MASK_MEAN) / MASK_SCALE,)
RGBM_HIGH = tuple((255.0 - m) / IMAGE_SCALE for m in RGB_MEAN) + ((255.0 - MASK_MEAN) / MASK_SCALE,)


@dataclasses.dataclass(frozen=True)
class ServingLimits:
    """The bounds of the module doc (all positive integers)."""

    max_batch: int = 256
    max_image_pixels: int = 36_000_000
    max_request_pixels: int = 64_000_000
    max_request_bytes: int = 64 * 1024 * 1024

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"serving limit {field.name} must be a positive integer, "
                                  f"got {value!r}")
        if self.max_request_pixels < self.max_image_pixels:
            raise ConfigError(f"serving limit max_request_pixels ({self.max_request_pixels}) "
                              f"must be at least max_image_pixels ({self.max_image_pixels})")

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


def _assert(condition: tf.Tensor, message: tf.Tensor | str) -> tf.Operation:
    return tf.debugging.Assert(condition, [message])


def check_batch_size(tensor: tf.Tensor, name: str, limits: ServingLimits) -> tf.Operation:
    """Asserts that `tensor` (rank >= 1, checked elsewhere) has at most max_batch elements."""
    n = tf.shape(tensor, out_type=tf.int64)[0] if tensor.shape.rank else tf.size(
        tensor, out_type=tf.int64)
    return _assert(n <= limits.max_batch, tf.strings.format(
        f"input {name} holds {{}} elements; a request may hold at most {limits.max_batch} "
        "(the export's max_batch): split it", n))


def _read_uint(padded: tf.Tensor, offset: int, length: int, little_endian: bool) -> tf.Tensor:
    """int64 [N]: the unsigned integer stored at `offset` of each element of string [N]
    (`_HEADER_PAD` zero bytes appended, so that short files read as 0, not as an error)."""
    raw = tf.cast(tf.io.decode_raw(tf.strings.substr(padded, offset, length), tf.uint8), tf.int64)
    weights = [256 ** (i if little_endian else length - 1 - i) for i in range(length)]
    return tf.reduce_sum(raw * tf.constant(weights, tf.int64), axis=-1)


_HEADER_PAD = "\0" * 32     # past the last header field read below


def _signed32(value: tf.Tensor) -> tf.Tensor:
    return tf.where(value >= 2 ** 31, value - 2 ** 32, value)


def _jpeg_size(contents: tf.Tensor) -> tf.Tensor:
    """int64 [N, 2] height, width of JPEG elements (0, 0 for the others)."""
    def one(data):
        return tf.cond(tf.equal(tf.strings.substr(data, 0, 3), JPEG_MAGIC),
                       lambda: tf.cast(tf.image.extract_jpeg_shape(data)[:2], tf.int64),
                       lambda: tf.zeros([2], tf.int64))
    return tf.map_fn(one, contents, fn_output_signature=tf.TensorSpec([2], tf.int64))


def encoded_sizes(contents: tf.Tensor) -> tf.Tensor:
    """int64 [N, 2]: (height, width) announced by each element's header, read without
    decoding; (0, 0) for an empty element or an unknown format."""
    head = tf.strings.substr(contents, 0, 4)

    def starts(magic):
        return tf.equal(tf.strings.substr(head, 0, len(magic)), magic)

    # Only the first bytes matter: the padding copies a header, not the file.
    padded = tf.strings.join([tf.strings.substr(contents, 0, 32), _HEADER_PAD])
    png = tf.stack([_read_uint(padded, 20, 4, False), _read_uint(padded, 16, 4, False)], -1)
    gif = tf.stack([_read_uint(padded, 8, 2, True), _read_uint(padded, 6, 2, True)], -1)
    # BMP heights are negative for top-down rows.
    bmp = tf.abs(tf.stack([_signed32(_read_uint(padded, 22, 4, True)),
                           _signed32(_read_uint(padded, 18, 4, True))], -1))
    sizes = tf.zeros_like(png)
    for mask, value in ((starts(PNG_MAGIC), png), (starts(GIF_MAGIC), gif),
                        (starts(BMP_MAGIC), bmp)):
        sizes = tf.where(mask[:, tf.newaxis], value, sizes)
    is_jpeg = starts(JPEG_MAGIC)
    return tf.cond(tf.reduce_any(is_jpeg),
                   lambda: tf.where(is_jpeg[:, tf.newaxis], _jpeg_size(contents), sizes),
                   lambda: sizes)


def check_encoded(contents: tf.Tensor, name: str, limits: ServingLimits,
                  allow_empty: bool) -> list[tf.Operation]:
    """The checks of string [N] input `name`: format, bytes, pixels per image and in all
    (each element named by its index)."""
    head = tf.strings.substr(contents, 0, 4)
    known = tf.zeros_like(contents, dtype=tf.bool)
    for magic in MAGIC:
        known |= tf.equal(tf.strings.substr(head, 0, len(magic)), magic)
    if allow_empty:
        known |= tf.equal(tf.strings.length(contents), 0)
    first_bad = tf.argmin(tf.cast(known, tf.int32), output_type=tf.int32)
    allowed = "a JPEG, PNG, BMP or GIF file" + (" (or empty: no mask)" if allow_empty else "")
    format_ok = _assert(tf.reduce_all(known),
                        tf.strings.format(f"input {name}[{{}}] is not {allowed}", first_bad))
    total_bytes = tf.reduce_sum(tf.strings.length(contents))
    bytes_ok = _assert(tf.cast(total_bytes, tf.int64) <= limits.max_request_bytes,
                       tf.strings.format(f"input {name} holds {{}} bytes; a request may hold at "
                                         f"most {limits.max_request_bytes} (the export's "
                                         "max_request_bytes)", total_bytes))
    with tf.control_dependencies([format_ok, bytes_ok]):
        sizes = encoded_sizes(contents)
    pixels = sizes[:, 0] * sizes[:, 1]
    worst = tf.argmax(pixels, output_type=tf.int32)
    image_ok = _assert(tf.reduce_max(tf.concat([pixels, [0]], 0)) <= limits.max_image_pixels,
                       tf.strings.format(
                           f"input {name}[{{}}] is a {{}}x{{}} image ({{}} pixels); an image "
                           f"may have at most {limits.max_image_pixels} pixels (the export's "
                           "max_image_pixels)",
                           (worst, tf.gather(sizes, worst)[1], tf.gather(sizes, worst)[0],
                            tf.gather(pixels, worst))))
    total = tf.reduce_sum(pixels)
    request_ok = _assert(total <= limits.max_request_pixels, tf.strings.format(
        f"input {name} holds {{}} pixels in all; a request may hold at most "
        f"{limits.max_request_pixels} (the export's max_request_pixels): split it", total))
    return [format_ok, bytes_ok, image_ok, request_ok]


def check_pixels(image: tf.Tensor, name: str, limits: ServingLimits) -> list[tf.Operation]:
    """The pixel bounds of uint8 [N, H, W, C] input `name` (any H, W)."""
    shape = tf.shape(image, out_type=tf.int64)
    dims = tf.concat([shape, tf.zeros([4], tf.int64)], 0)[:4]
    per_image = dims[1] * dims[2]
    image_ok = _assert(per_image <= limits.max_image_pixels, tf.strings.format(
        f"input {name} holds {{}}x{{}} images ({{}} pixels); an image may have at most "
        f"{limits.max_image_pixels} pixels (the export's max_image_pixels)",
        (dims[2], dims[1], per_image)))
    request_ok = _assert(dims[0] * per_image <= limits.max_request_pixels, tf.strings.format(
        f"input {name} holds {{}} pixels in all; a request may hold at most "
        f"{limits.max_request_pixels} (the export's max_request_pixels): split it",
        dims[0] * per_image))
    return [check_batch_size(image, name, limits), image_ok, request_ok]


def check_rgbm_range(rgbm: tf.Tensor, name: str) -> tf.Operation:
    """Asserts that float [..., 4] holds only values `preprocess` can produce."""
    low = tf.constant(RGBM_LOW, tf.float32) - _RANGE_SLACK
    high = tf.constant(RGBM_HIGH, tf.float32) + _RANGE_SLACK
    inside = tf.reduce_all((rgbm >= low) & (rgbm <= high))
    return _assert(inside, tf.strings.format(
        f"input {name} holds values outside the preprocessed range (min {{}}, max {{}}; "
        f"each channel lies within [{min(RGBM_LOW):.4f}, {max(RGBM_HIGH):.4f}]): feed "
        "preprocess() output", (tf.reduce_min(rgbm), tf.reduce_max(rgbm))))


__all__ = ["ServingLimits", "encoded_sizes", "check_batch_size", "check_encoded",
           "check_pixels", "check_rgbm_range", "MAGIC", "RGBM_LOW", "RGBM_HIGH"]
