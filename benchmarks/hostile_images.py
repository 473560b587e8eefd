"""Hostile image files, made small on disk: decompression bombs and headers that lie.

Used by tests/serving/test_serving_limits.py (refusal and peak memory) and by
benchmarks/bench_serving.py --hostile (refusal time).
"""

from __future__ import annotations

import struct
import zlib

import numpy as np


def png_bomb(side: int) -> bytes:
    """A black side x side 8-bit grey PNG, deflated row by row (never held whole)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    squeeze = zlib.compressobj(9)
    row = b"\0" * (side + 1)        # filter byte + pixels
    parts = [squeeze.compress(row) for _ in range(side)]
    parts.append(squeeze.flush())
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(parts))
            + chunk(b"IEND", b""))


def jpeg_claiming(height: int, width: int) -> bytes:
    """A small JPEG whose SOF marker announces height x width."""
    import tensorflow as tf

    data = bytearray(tf.io.encode_jpeg(np.zeros((8, 8, 3), np.uint8)).numpy())
    at = data.index(b"\xff\xc0")
    data[at + 5:at + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def gif_claiming(height: int, width: int) -> bytes:
    return b"GIF89a" + struct.pack("<HH", width, height) + b"\0" * 16


def bmp_claiming(height: int, width: int) -> bytes:
    return (b"BM" + struct.pack("<IHHI", 54, 0, 0, 54)
            + struct.pack("<IiiHH", 40, width, -height, 1, 24) + b"\0" * 24)
