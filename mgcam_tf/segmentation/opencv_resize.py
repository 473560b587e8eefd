"""OpenCV's uint8 resizing reproduced bit for bit in numpy (INTER_AREA, INTER_LINEAR).

The masks of ../shared/data were made with OpenCV's resizes; near misses
(float area resize, TF's resizes) move silhouettes (see the package doc).
Tap tables are cached per size: crops of one data set come in few sizes.
"""

from __future__ import annotations

import functools
import math
import numpy as np

@functools.lru_cache(maxsize=1024)
def area_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV's INTER_AREA table for shrinking n_in -> n_out (`computeResizeAreaTab`).

    Returns source indices and float32 weights, both [n_out, taps], padded
    with weight 0 (adding 0 leaves a float32 sum bit-identical). Overlaps
    below 1e-3 are dropped as OpenCV drops them.
    """
    scale = n_in / n_out
    rows: list[list[tuple[int, float]]] = []
    for d in range(n_out):
        f1 = d * scale
        f2 = f1 + scale
        cell = min(scale, n_in - f1)
        s1, s2 = math.ceil(f1), math.floor(f2)
        s2 = min(s2, n_in - 1)
        s1 = min(s1, s2)
        taps = []
        if s1 - f1 > 1e-3:
            taps.append((s1 - 1, (s1 - f1) / cell))
        taps.extend((s, 1.0 / cell) for s in range(s1, s2))
        if f2 - s2 > 1e-3:
            taps.append((s2, min(f2 - s2, 1.0, cell) / cell))
        rows.append(taps)
    width = max(len(t) for t in rows)
    index = np.zeros((n_out, width), np.int64)
    weight = np.zeros((n_out, width), np.float32)
    for d, taps in enumerate(rows):
        for k, (s, a) in enumerate(taps):
            index[d, k], weight[d, k] = s, np.float32(a)
    return index, weight


def resize_area_u8(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """cv2.resize(image, (width, height), interpolation=INTER_AREA) for shrinking, bit-exact.

    OpenCV sums each row's taps in float32, in order (`buf += S * alpha`),
    then the rows (`sum += beta * buf`), and rounds half to even; the same
    float32 operations in the same order give the same bytes. (A float
    matrix product differs at exact .5 values, which moves ~0.3 % of the
    mask pixels through the network's sensitivity to its input.)
    """
    h, w = image.shape[:2]
    if h % height == 0 and w % width == 0:
        # Integer factors: OpenCV's fast path sums integers; its 2x2 SIMD
        # kernel rounds half up, the general one multiplies by a float32 1/area.
        fy, fx = h // height, w // width
        sums = image.reshape(height, fy, width, fx, 3).sum(axis=(1, 3), dtype=np.int64)
        if fy * fx == 4:
            return ((sums + 2) >> 2).astype(np.uint8)
        scaled = sums.astype(np.float32) * np.float32(1.0 / (fy * fx))
        return np.rint(scaled).clip(0, 255).astype(np.uint8)
    x_index, x_weight = area_taps(w, width)
    y_index, y_weight = area_taps(h, height)
    src = image.astype(np.float32)
    rows = src[:, x_index[:, 0]] * x_weight[None, :, 0, None]
    for k in range(1, x_index.shape[1]):
        rows += src[:, x_index[:, k]] * x_weight[None, :, k, None]
    out = rows[y_index[:, 0]] * y_weight[:, 0, None, None]
    for k in range(1, y_index.shape[1]):
        out += rows[y_index[:, k]] * y_weight[:, k, None, None]
    return np.rint(out).clip(0, 255).astype(np.uint8)


@functools.lru_cache(maxsize=1024)
def linear_taps(n_in: int, n_out: int, clamp: bool) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV's INTER_LINEAR source index and 11-bit fixed-point weights [n_out, 2].

    Columns (`clamp`) outside the image use the edge pixel with weight 2048;
    rows keep their fractional weights and read the edge row twice, so
    their two weights may add up to 2047 or 2049, as in OpenCV.
    """
    scale = n_in / n_out
    index = np.zeros(n_out, np.int64)
    weight = np.zeros((n_out, 2), np.int64)
    for d in range(n_out):
        f = np.float32((d + 0.5) * scale - 0.5)
        s = math.floor(f)
        f = np.float32(f - np.float32(s))
        if clamp and s < 0:
            s, f = 0, np.float32(0)
        if clamp and s >= n_in - 1:
            s, f = n_in - 1, np.float32(0)
        index[d] = s
        weight[d] = (int(np.rint((np.float32(1) - f) * np.float32(2048))),
                     int(np.rint(f * np.float32(2048))))
    return index, weight


def resize_linear_u8(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """cv2.resize(image, (width, height), interpolation=INTER_LINEAR) on uint8, bit-exact.

    OpenCV interpolates columns in integers (weights x 2048), then rows with
    its SIMD kernel: each row term is shifted right by 4, multiplied by its
    weight keeping the high 16 bits, and the sum rounded by 2 bits.
    """
    h, w = image.shape[:2]
    x_index, x_weight = linear_taps(w, width, clamp=True)
    y_index, y_weight = linear_taps(h, height, clamp=False)
    src = image.astype(np.int32)
    x_next = np.minimum(x_index + 1, w - 1)
    rows = (src[:, x_index] * x_weight[None, :, 0, None].astype(np.int32)
            + src[:, x_next] * x_weight[None, :, 1, None].astype(np.int32))
    top = rows[np.clip(y_index, 0, h - 1)] >> 4
    bottom = rows[np.clip(y_index + 1, 0, h - 1)] >> 4
    out = (((top * y_weight[:, 0, None, None].astype(np.int32)) >> 16)
           + ((bottom * y_weight[:, 1, None, None].astype(np.int32)) >> 16) + 2) >> 2
    return out.clip(0, 255).astype(np.uint8)


def bilinear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear resizing with half-pixel centres (OpenCV, TF): for each output
    index its two source indices and the weight of the second, float32.

    Used on the float logits, where only the sign matters: float rounding
    cannot tell this from OpenCV's own loop there.
    """
    x = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    x0 = np.floor(x)
    frac = (x - x0).astype(np.float32)
    lo = np.clip(x0, 0, n_in - 1).astype(np.int64)
    hi = np.clip(x0 + 1, 0, n_in - 1).astype(np.int64)
    return lo, hi, frac
