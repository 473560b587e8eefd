"""The BlazePose-full mask recipe in TensorFlow ops, for masks made inside a served graph.

The same steps as `segmenter.BodySegmenter`, with the same arithmetic:

1. letterbox geometry: longer side 256/1.15 px, sizes rounded half to even
   (Python's `round`, done here in float64 like the numpy code);
2. the uint8 resize into the letterbox as OpenCV does it: INTER_AREA when
   shrinking (float32 taps summed in the same order, rounded half to even;
   the integer-factor fast paths), INTER_LINEAR when growing (11-bit fixed
   point), ports of `opencv_resize` with the tap tables computed in the
   graph because crop sizes are known only at run time;
3. black canvas, RGB / 255, `blazepose_graph.SegmentationNetwork`;
4. the letterbox cut off, logits resized bilinearly (half-pixel centres) to
   the crop, body where logit > 0 -> uint8 0/255.

Every function takes rank-4 batches [N, H, W, C] whose images share one size;
sizes may be unknown when tracing. The only difference from the numpy path
is then the network's float32 summation order (logits within ~1e-4 of the
interpreter's relative to their range), which moves a few boundary pixels.
"""

from __future__ import annotations

from typing import Callable

import tensorflow as tf

INPUT_SIZE = 256
LONG_SIDE = INPUT_SIZE / 1.15            # as segmenter.LONG_SIDE (float64)


def letterbox_geometry(height: tf.Tensor, width: tf.Tensor) -> tuple[tf.Tensor, ...]:
    """(resized height, resized width, top, left), int32 scalars, of an H x W crop."""
    h = tf.cast(height, tf.float64)
    w = tf.cast(width, tf.float64)
    scale = tf.constant(LONG_SIDE, tf.float64) / tf.maximum(h, w)

    def side(n):
        return tf.cast(tf.clip_by_value(tf.round(n * scale), 1.0, float(INPUT_SIZE)), tf.int32)

    nh, nw = side(h), side(w)
    return nh, nw, (INPUT_SIZE - nh) // 2, (INPUT_SIZE - nw) // 2


# -- OpenCV's INTER_AREA (shrinking) -----------------------------------------------

def _area_taps(n_in: tf.Tensor, n_out: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """`opencv_resize.area_taps` in the graph: index int32 and weight float32 [n_out, K]."""
    n_in_f = tf.cast(n_in, tf.float64)
    scale = n_in_f / tf.cast(n_out, tf.float64)
    f1 = tf.range(tf.cast(n_out, tf.float64), dtype=tf.float64) * scale
    f2 = f1 + scale
    cell = tf.minimum(scale, n_in_f - f1)
    s2 = tf.minimum(tf.floor(f2), n_in_f - 1.0)
    s1 = tf.minimum(tf.math.ceil(f1), s2)
    lead = (s1 - f1) > 1e-3
    trail = (f2 - s2) > 1e-3
    lead_i = tf.cast(lead, tf.int32)
    count = lead_i + tf.cast(s2 - s1, tf.int32) + tf.cast(trail, tf.int32)
    start = tf.cast(s1, tf.int32) - lead_i
    k = tf.range(tf.reduce_max(count))[tf.newaxis, :]
    valid = k < count[:, tf.newaxis]
    index = tf.where(valid, start[:, tf.newaxis] + k, 0)
    weight = tf.where(valid, (1.0 / cell)[:, tf.newaxis], 0.0)
    weight = tf.where(lead[:, tf.newaxis] & (k == 0), ((s1 - f1) / cell)[:, tf.newaxis], weight)
    last = tf.minimum(tf.minimum(f2 - s2, 1.0), cell) / cell
    weight = tf.where(trail[:, tf.newaxis] & (k == count[:, tf.newaxis] - 1),
                      last[:, tf.newaxis], weight)
    return index, tf.cast(weight, tf.float32)


def _tap_sum(src: tf.Tensor, index: tf.Tensor, weight: tf.Tensor, axis: int) -> tf.Tensor:
    """sum_k src[index[:, k]] * weight[:, k] along `axis`, in k order (float32,
    one rounding per product and per sum, as OpenCV's loop and the numpy port)."""
    shape = [1, 1, 1, 1]
    shape[axis] = -1

    def term(k):
        # Gathered first, cast after: a uint8 source is never copied whole to float32.
        taps = tf.cast(tf.gather(src, index[:, k], axis=axis), tf.float32)
        return taps * tf.reshape(weight[:, k], shape)

    first = term(0)
    _, total = tf.while_loop(lambda k, acc: k < tf.shape(index)[1],
                             lambda k, acc: (k + 1, acc + term(k)),
                             (tf.constant(1), first))
    return total


def resize_area_u8(images: tf.Tensor, height: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
    """cv2.resize(..., INTER_AREA) of uint8 [N, H, W, C] to [N, height, width, C], bit-exact."""
    shape = tf.shape(images)
    h, w, c = shape[1], shape[2], shape[3]

    def integer_factors():
        fy, fx = h // height, w // width
        # Column sums one offset at a time: int32 [N, H, width, C], never a
        # full-size int32 copy of a large image (served images are bounded,
        # but 36 MP as int32 is still 432 MB).
        def add_column(j, acc):
            column = tf.strided_slice(images, [0, 0, j, 0], shape, [1, 1, fx, 1])
            return j + 1, acc + tf.cast(column, tf.int32)

        first = tf.cast(tf.strided_slice(images, [0, 0, 0, 0], shape, [1, 1, fx, 1]), tf.int32)
        _, columns = tf.while_loop(lambda j, acc: j < fx, add_column, (tf.constant(1), first))
        sums = tf.reduce_sum(tf.reshape(columns, [shape[0], height, fy, width, c]), axis=2)

        def two_by_two():     # OpenCV's SIMD 2x2 kernel rounds half up
            return tf.cast(tf.bitwise.right_shift(sums + 2, 2), tf.uint8)

        def general():
            inv = tf.cast(1.0 / tf.cast(fy * fx, tf.float64), tf.float32)
            return _to_u8(tf.cast(sums, tf.float32) * inv)

        return tf.cond(tf.equal(fy * fx, 4), two_by_two, general)

    def fractional():
        x_index, x_weight = _area_taps(w, width)
        y_index, y_weight = _area_taps(h, height)
        rows = _tap_sum(images, x_index, x_weight, axis=2)
        return _to_u8(_tap_sum(rows, y_index, y_weight, axis=1))

    return tf.cond(tf.equal(h % height, 0) & tf.equal(w % width, 0),
                   integer_factors, fractional)


def _to_u8(x: tf.Tensor) -> tf.Tensor:
    # np.rint: round half to even, as tf.round.
    return tf.cast(tf.clip_by_value(tf.round(x), 0.0, 255.0), tf.uint8)


# -- OpenCV's INTER_LINEAR (growing) ----------------------------------------------

def _linear_taps(n_in: tf.Tensor, n_out: tf.Tensor, clamp: bool) -> tuple[tf.Tensor, ...]:
    """`opencv_resize.linear_taps`: source index int32 [n_out], weights int32 [n_out] x 2."""
    scale = tf.cast(n_in, tf.float64) / tf.cast(n_out, tf.float64)
    d = tf.range(tf.cast(n_out, tf.float64), dtype=tf.float64)
    f = tf.cast((d + 0.5) * scale - 0.5, tf.float32)
    s = tf.floor(f)
    f = f - s
    s = tf.cast(s, tf.int32)
    if clamp:
        low, high = s < 0, s >= n_in - 1
        f = tf.where(low | high, 0.0, f)
        s = tf.where(low, 0, tf.where(high, n_in - 1, s))
    w0 = tf.cast(tf.round((1.0 - f) * 2048.0), tf.int32)
    w1 = tf.cast(tf.round(f * 2048.0), tf.int32)
    return s, w0, w1


def resize_linear_u8(images: tf.Tensor, height: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
    """cv2.resize(..., INTER_LINEAR) of uint8 [N, H, W, C], bit-exact (fixed point)."""
    shape = tf.shape(images)
    h, w = shape[1], shape[2]
    x_index, x_w0, x_w1 = _linear_taps(w, width, clamp=True)
    y_index, y_w0, y_w1 = _linear_taps(h, height, clamp=False)
    src = tf.cast(images, tf.int32)
    cols = (tf.gather(src, x_index, axis=2) * tf.reshape(x_w0, [1, 1, -1, 1])
            + tf.gather(src, tf.minimum(x_index + 1, w - 1), axis=2)
            * tf.reshape(x_w1, [1, 1, -1, 1]))
    shift = tf.bitwise.right_shift
    top = shift(tf.gather(cols, tf.clip_by_value(y_index, 0, h - 1), axis=1), 4)
    bottom = shift(tf.gather(cols, tf.clip_by_value(y_index + 1, 0, h - 1), axis=1), 4)
    out = shift(shift(top * tf.reshape(y_w0, [1, -1, 1, 1]), 16)
                + shift(bottom * tf.reshape(y_w1, [1, -1, 1, 1]), 16) + 2, 2)
    return tf.cast(tf.clip_by_value(out, 0, 255), tf.uint8)


def letterbox_resize(images: tf.Tensor, height: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
    """`segmenter.letterbox_resize`: INTER_AREA when shrinking, INTER_LINEAR when growing."""
    shape = tf.shape(images)
    h, w = shape[1], shape[2]
    same = tf.equal(h, height) & tf.equal(w, width)
    shrink = (height < h) | (width < w)
    return tf.cond(same, lambda: tf.identity(images),
                   lambda: tf.cond(shrink, lambda: resize_area_u8(images, height, width),
                                   lambda: resize_linear_u8(images, height, width)))


# -- the recipe --------------------------------------------------------------------

def decode_crop(data: tf.Tensor) -> tf.Tensor:
    """Encoded image bytes -> uint8 RGB [H, W, 3], as `segmenter.decode_image` decodes:
    JPEG with libjpeg's accurate integer IDCT (TF's default fast IDCT changes
    about 1 % of the mask pixels), other formats as `tf.io.decode_image`."""
    image = tf.cond(tf.equal(tf.strings.substr(data, 0, 3), b"\xff\xd8\xff"),
                    lambda: tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE"),
                    lambda: tf.io.decode_image(data, channels=3, expand_animations=False))
    return tf.ensure_shape(image, [None, None, 3])


def letterbox_canvas(images: tf.Tensor) -> tuple[tf.Tensor, tuple[tf.Tensor, ...]]:
    """uint8 [N, H, W, 3] -> the network input float32 [N, 256, 256, 3] and the geometry."""
    shape = tf.shape(images)
    geometry = letterbox_geometry(shape[1], shape[2])
    nh, nw, top, left = geometry
    resized = tf.cast(letterbox_resize(images, nh, nw), tf.float32) / 255.0
    canvas = tf.pad(resized, [[0, 0], [top, INPUT_SIZE - nh - top],
                              [left, INPUT_SIZE - nw - left], [0, 0]])
    canvas = tf.ensure_shape(canvas, [None, INPUT_SIZE, INPUT_SIZE, 3])
    return canvas, geometry


def _bilinear_taps(n_in: tf.Tensor, n_out: tf.Tensor) -> tuple[tf.Tensor, ...]:
    """`opencv_resize.bilinear_taps`: lo, hi int32 and the weight of hi float32."""
    x = ((tf.range(tf.cast(n_out, tf.float64), dtype=tf.float64) + 0.5)
         * (tf.cast(n_in, tf.float64) / tf.cast(n_out, tf.float64)) - 0.5)
    x0 = tf.floor(x)
    frac = tf.cast(x - x0, tf.float32)
    lo = tf.cast(tf.clip_by_value(x0, 0.0, tf.cast(n_in - 1, tf.float64)), tf.int32)
    hi = tf.cast(tf.clip_by_value(x0 + 1.0, 0.0, tf.cast(n_in - 1, tf.float64)), tf.int32)
    return lo, hi, frac


def logits_to_crop(logits: tf.Tensor, geometry: tuple[tf.Tensor, ...],
                   height: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
    """Letterboxed logits [N, 256, 256, 1] -> float32 [N, height, width, 1] of the crop."""
    nh, nw, top, left = geometry
    cut = logits[:, top:top + nh, left:left + nw, :]
    lo, hi, frac = _bilinear_taps(nh, height)
    upper = tf.gather(cut, lo, axis=1)
    rows = upper + (tf.gather(cut, hi, axis=1) - upper) * tf.reshape(frac, [1, -1, 1, 1])
    lo, hi, frac = _bilinear_taps(nw, width)
    left_ = tf.gather(rows, lo, axis=2)
    return left_ + (tf.gather(rows, hi, axis=2) - left_) * tf.reshape(frac, [1, 1, -1, 1])


def binary_mask(logits: tf.Tensor) -> tf.Tensor:
    """uint8 0 (background) / 255 (body) where logit > 0."""
    return tf.where(logits > 0.0, tf.constant(255, tf.uint8), tf.constant(0, tf.uint8))


def crop_masks(network: Callable[[tf.Tensor], tf.Tensor], images: tf.Tensor) -> tf.Tensor:
    """The recipe's masks, uint8 [N, H, W, 1], of uint8 RGB crops [N, H, W, 3] of one size."""
    shape = tf.shape(images)
    canvas, geometry = letterbox_canvas(images)
    return binary_mask(logits_to_crop(network(canvas), geometry, shape[1], shape[2]))


__all__ = ["decode_crop", "letterbox_geometry", "resize_area_u8", "resize_linear_u8", "letterbox_resize",
           "letterbox_canvas", "logits_to_crop", "binary_mask", "crop_masks", "INPUT_SIZE"]
