"""Reports people can look at: a results table, a CMC curve PNG, a ranked-list PNG.

No plotting library: images are numpy arrays, drawn with a few primitives and
a built-in 5x7 bitmap font, and written by a minimal PNG encoder (zlib).
Every file goes to a temporary name in the same folder first, then is renamed,
so a reader never sees half a file.
"""

from __future__ import annotations

import os
import struct
import zlib
from typing import Sequence

import numpy as np

from mgcam_tf.errors import ConfigError, DataError
from mgcam_tf import atomic_files

GREEN = (40, 170, 60)
RED = (215, 40, 40)
BLUE = (40, 90, 215)
GREY = (150, 150, 150)
BLACK = (0, 0, 0)
WHITE = (255, 255, 255)


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of a uint8 [H, W, 3] (RGB) or [H, W] (grey) image."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or (
            image.ndim == 3 and image.shape[2] != 3):
        raise DataError(f"PNG images must be uint8 [H, W, 3] or [H, W], got {image.dtype} "
                        f"{image.shape}")
    h, w = image.shape[:2]
    color_type = 2 if image.ndim == 3 else 0
    # Each row starts with filter byte 0 (none).
    raw = np.concatenate([np.zeros((h, 1), np.uint8), image.reshape(h, -1)], axis=1)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", w, h, 8, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(raw.tobytes(), 6)) + chunk(b"IEND", b""))


def write_png(path: str | os.PathLike, image: np.ndarray) -> None:
    """PNG file of a uint8 image, written atomically."""
    atomic_files.write_bytes(path, encode_png(image))


# --------------------------------------------------------------------------
# Text table

# Summary keys shown, in order, and their column names.
TABLE_COLUMNS = {"rank1": "Rank-1", "rank5": "Rank-5", "rank10": "Rank-10",
                 "rank20": "Rank-20", "mAP": "mAP", "mINP": "mINP"}


def format_targets_table(rows: list[tuple[str, dict, int]], settings: dict | None = None) -> str:
    """Several target sets' results in one table, a row per set (cross-domain evaluation).

    rows: (data set name, summary as for `format_table`, queries evaluated).
    """
    keys = [k for k in TABLE_COLUMNS if all(k in summary for _, summary, _ in rows)]
    header = ("data set", *(TABLE_COLUMNS[k] for k in keys), "queries")
    cells = [(name, *(f"{100 * summary[k]:.2f}" for k in keys), str(valid))
             for name, summary, valid in rows]
    widths = [max(len(str(c[i])) for c in (header, *cells)) for i in range(len(header))]
    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def line(row):
        first = f" {row[0]:<{widths[0]}} "
        return "|" + "|".join([first] + [f" {c:>{w}} " for c, w in zip(row[1:], widths[1:])]) + "|"

    lines = ["  ".join(f"{k}={v}" for k, v in settings.items())] if settings else []
    lines += [rule, line(header), rule, *map(line, cells), rule]
    return "\n".join(lines)


def format_table(summary: dict, settings: dict | None = None,
                 num_valid: int | None = None, num_invalid: int | None = None,
                 no_match: str = "exclude") -> str:
    """Results as a small text table, percentages with two decimals.

    Args:
      summary: {"rank1": .., "rank5": .., "rank10": .., "rank20": .., "mAP": .., "mINP": ..}
        fractions (the keys of TABLE_COLUMNS it has).
      settings: shown above the table (metric, AP definition, ...).
      num_valid, num_invalid: query counts, shown below.
      no_match: "exclude" (invalid queries left out) or "count" (in the means).
    """
    lines = []
    if settings:
        lines.append("  ".join(f"{k}={v}" for k, v in settings.items()))
    keys = [k for k in TABLE_COLUMNS if k in summary]
    names = TABLE_COLUMNS
    widths = [max(len(names[k]), 6) for k in keys]
    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    lines.append(rule)
    lines.append("|" + "|".join(f" {names[k]:>{w}} " for k, w in zip(keys, widths)) + "|")
    lines.append(rule)
    lines.append("|" + "|".join(f" {100 * summary[k]:>{w}.2f} " for k, w in zip(keys, widths))
                 + "|")
    lines.append(rule)
    if num_valid is not None:
        text = f"{num_valid} queries evaluated"
        if num_invalid:
            how = "left out" if no_match == "exclude" else "counted as misses with AP 0"
            text += f"; {num_invalid} without a valid match in the gallery ({how})"
        lines.append(text)
    return "\n".join(lines)


# --------------------------------------------------------------------------
# Drawing primitives

_FONT_ROWS = {  # 5x7 bitmap glyphs, one string of 7 rows of 5 bits each
    "0": "01110 10001 10011 10101 11001 10001 01110",
    "1": "00100 01100 00100 00100 00100 00100 01110",
    "2": "01110 10001 00001 00010 00100 01000 11111",
    "3": "11111 00010 00100 00010 00001 10001 01110",
    "4": "00010 00110 01010 10010 11111 00010 00010",
    "5": "11111 10000 11110 00001 00001 10001 01110",
    "6": "00110 01000 10000 11110 10001 10001 01110",
    "7": "11111 00001 00010 00100 01000 01000 01000",
    "8": "01110 10001 10001 01110 10001 10001 01110",
    "9": "01110 10001 10001 01111 00001 00010 01100",
    ".": "00000 00000 00000 00000 00000 01100 01100",
    "%": "11000 11001 00010 00100 01000 10011 00011",
    ":": "00000 01100 01100 00000 01100 01100 00000",
    "-": "00000 00000 00000 11111 00000 00000 00000",
    "=": "00000 00000 11111 00000 11111 00000 00000",
    "/": "00000 00001 00010 00100 01000 10000 00000",
    "(": "00010 00100 01000 01000 01000 00100 00010",
    ")": "01000 00100 00010 00010 00010 00100 01000",
    "+": "00000 00100 00100 11111 00100 00100 00000",
    " ": "00000 00000 00000 00000 00000 00000 00000",
    "A": "01110 10001 10001 11111 10001 10001 10001",
    "C": "01110 10001 10000 10000 10000 10001 01110",
    "D": "11110 10001 10001 10001 10001 10001 11110",
    "E": "11111 10000 10000 11110 10000 10000 11111",
    "G": "01110 10001 10000 10111 10001 10001 01111",
    "I": "01110 00100 00100 00100 00100 00100 01110",
    "K": "10001 10010 10100 11000 10100 10010 10001",
    "L": "10000 10000 10000 10000 10000 10000 11111",
    "M": "10001 11011 10101 10101 10001 10001 10001",
    "N": "10001 10001 11001 10101 10011 10001 10001",
    "O": "01110 10001 10001 10001 10001 10001 01110",
    "P": "11110 10001 10001 11110 10000 10000 10000",
    "Q": "01110 10001 10001 10001 10101 10010 01101",
    "R": "11110 10001 10001 11110 10100 10010 10001",
    "S": "01111 10000 10000 01110 00001 00001 11110",
    "T": "11111 00100 00100 00100 00100 00100 00100",
    "U": "10001 10001 10001 10001 10001 10001 01110",
    "X": "10001 10001 01010 00100 01010 10001 10001",
    "Y": "10001 10001 01010 00100 00100 00100 00100",
    # The rest of the alphabet and the punctuation of labels, file names and
    # model names (result sheets print `#1`, `ID 0042`, `D=0.53`, `TOP-K`).
    "B": "11110 10001 10001 11110 10001 10001 11110",
    "F": "11111 10000 10000 11110 10000 10000 10000",
    "H": "10001 10001 10001 11111 10001 10001 10001",
    "J": "00111 00010 00010 00010 00010 10010 01100",
    "V": "10001 10001 10001 10001 10001 01010 00100",
    "W": "10001 10001 10001 10101 10101 10101 01010",
    "Z": "11111 00001 00010 00100 01000 10000 11111",
    "#": "01010 01010 11111 01010 11111 01010 01010",
    "_": "00000 00000 00000 00000 00000 00000 11111",
    ",": "00000 00000 00000 00000 01100 00100 01000",
    "'": "01100 00100 01000 00000 00000 00000 00000",
    "!": "00100 00100 00100 00100 00100 00000 00100",
    "?": "01110 10001 00001 00010 00100 00000 00100",
    "<": "00010 00100 01000 10000 01000 00100 00010",
    ">": "01000 00100 00010 00001 00010 00100 01000",
    "*": "00000 00100 10101 01110 10101 00100 00000",
    "[": "01110 01000 01000 01000 01000 01000 01110",
    "]": "01110 00010 00010 00010 00010 00010 01110",
    "&": "01100 10010 10100 01000 10101 10010 01101",
    "@": "01110 10001 10111 10101 10111 10000 01110",
    "\u2713": "00000 00001 00010 10100 01000 00000 00000",   # check mark: right match
    "\u2717": "00000 10001 01010 00100 01010 10001 00000",   # cross: wrong match
}
_FONT = {c: np.array([[b == "1" for b in row] for row in rows.split()], dtype=bool)
         for c, rows in _FONT_ROWS.items()}


def missing_glyphs(text: str) -> set[str]:
    """The characters of `text` that `draw_text` has no glyph for (it upper-cases first)."""
    return {ch for ch in text.upper() if ch not in _FONT}


def draw_text(canvas: np.ndarray, text: str, x: int, y: int, color=BLACK, scale: int = 1) -> None:
    """Writes `text` (upper-cased; characters without a glyph, `missing_glyphs`, as
    blanks) with its top-left at (x, y)."""
    for i, ch in enumerate(text.upper()):
        glyph = _FONT.get(ch, _FONT[" "])
        if scale > 1:
            glyph = np.kron(glyph, np.ones((scale, scale), dtype=bool))
        gx = x + i * 6 * scale
        h, w = glyph.shape
        y0, y1 = max(y, 0), min(y + h, canvas.shape[0])
        x0, x1 = max(gx, 0), min(gx + w, canvas.shape[1])
        if y0 >= y1 or x0 >= x1:
            continue
        sub = glyph[y0 - y:y1 - y, x0 - gx:x1 - gx]
        canvas[y0:y1, x0:x1][sub] = color


def draw_line(canvas: np.ndarray, x0: float, y0: float, x1: float, y1: float,
              color=BLACK, width: int = 1) -> None:
    """A straight line, sampled densely enough to leave no gaps."""
    n = int(max(abs(x1 - x0), abs(y1 - y0))) * 2 + 2
    xs = np.rint(np.linspace(x0, x1, n)).astype(int)
    ys = np.rint(np.linspace(y0, y1, n)).astype(int)
    for dx in range(-(width // 2), width - width // 2):
        for dy in range(-(width // 2), width - width // 2):
            px, py = xs + dx, ys + dy
            ok = (px >= 0) & (px < canvas.shape[1]) & (py >= 0) & (py < canvas.shape[0])
            canvas[py[ok], px[ok]] = color


def draw_border(tile: np.ndarray, color, width: int = 4) -> None:
    """Colours the outer `width` pixels of a tile in place."""
    tile[:width], tile[-width:] = color, color
    tile[:, :width], tile[:, -width:] = color, color


# --------------------------------------------------------------------------
# CMC curve

def cmc_curve_image(curves: dict[str, np.ndarray], max_rank: int = 50,
                    width: int = 640, height: int = 420) -> np.ndarray:
    """uint8 [height, width, 3] plot of CMC curves (fractions), ranks 1..max_rank.

    Args:
      curves: label -> cmc float [>= 1]; at most 4 curves (colours blue, red,
        green, grey), the legend shows the label and rank-1.
    """
    if not curves:
        raise ConfigError("cmc_curve_image needs at least one curve")
    colors = [BLUE, RED, GREEN, GREY]
    if len(curves) > len(colors):
        raise ConfigError(f"at most {len(colors)} curves per plot, got {len(curves)}")
    canvas = np.full((height, width, 3), 255, np.uint8)
    left, right, top, bottom = 60, width - 20, 20, height - 50
    lowest = min(float(np.min(np.asarray(c)[:max_rank])) for c in curves.values())
    y_min = max(0.0, np.floor(lowest * 10) / 10)  # zoom on the used range, in steps of 0.1
    n = max_rank

    def px(rank: float) -> float:
        return left + (rank - 1) / max(n - 1, 1) * (right - left)

    def py(value: float) -> float:
        return bottom - (value - y_min) / max(1.0 - y_min, 1e-9) * (bottom - top)

    for tick in np.arange(y_min, 1.0001, 0.1):
        y = py(tick)
        draw_line(canvas, left, y, right, y, (225, 225, 225))
        draw_text(canvas, f"{100 * tick:.0f}", left - 24, int(y) - 3)
    for rank in [1] + list(range(5, n + 1, 5 if n <= 50 else 10)):
        x = px(rank)
        draw_line(canvas, x, bottom, x, bottom + 4)
        label = str(rank)
        draw_text(canvas, label, int(x) - 3 * len(label), bottom + 8)
    draw_line(canvas, left, top, left, bottom)
    draw_line(canvas, left, bottom, right, bottom)
    draw_text(canvas, "RANK", (left + right) // 2 - 12, bottom + 24)
    draw_text(canvas, "CMC %", 4, top - 14 if top >= 14 else 2)
    for idx, (label, cmc) in enumerate(curves.items()):
        cmc = np.asarray(cmc, dtype=np.float64)[:n]
        color = colors[idx]
        pts = [(px(r + 1), py(v)) for r, v in enumerate(cmc)]
        for (xa, ya), (xb, yb) in zip(pts[:-1], pts[1:]):
            draw_line(canvas, xa, ya, xb, yb, color, width=2)
        legend_y = bottom - 20 - 14 * (len(curves) - 1 - idx)
        draw_line(canvas, right - 200, legend_y + 3, right - 180, legend_y + 3, color, width=2)
        draw_text(canvas, f"{label} R1={100 * cmc[0]:.2f}", right - 174, legend_y, color)
    return canvas


def write_cmc_curve(path: str | os.PathLike, curves: dict[str, np.ndarray],
                    max_rank: int = 50) -> None:
    """CMC curve PNG (see `cmc_curve_image`), written atomically."""
    write_png(path, cmc_curve_image(curves, max_rank=max_rank))


# --------------------------------------------------------------------------
# Ranked lists

def read_tile(path: str, height: int, width: int) -> np.ndarray:
    """An image file (JPEG, PNG, BMP, GIF) as uint8 [height, width, 3], resized (the
    pictures of the ranked lists, of mgcam-search's sheets and of the attention maps)."""
    import tensorflow as tf  # only here: the rest of this module needs no TF

    try:
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    except (tf.errors.OpError, ValueError) as err:
        raise DataError(f"{path}: cannot read image for the picture "
                        f"({str(err).splitlines()[0]})") from None
    image = tf.image.resize(image, (height, width), method="bilinear", antialias=True)
    return np.clip(np.rint(image.numpy()), 0, 255).astype(np.uint8)


def ranked_list_image(distmat: np.ndarray, query_paths: Sequence[str],
                      gallery_paths: Sequence[str], query_pids: np.ndarray,
                      query_camids: np.ndarray, gallery_pids: np.ndarray,
                      gallery_camids: np.ndarray, *, queries: Sequence[int] | None = None,
                      num_queries: int = 8, top_k: int = 10, tile_height: int = 128,
                      tile_width: int = 64, tile_panels=None) -> np.ndarray:
    """uint8 image: one row per query, the query then its top_k gallery items.

    Items the protocol ignores (same id and camera, id -1) are left out, as in
    the evaluation; a match (same id) has a green border, a miss a red one,
    the query a blue one.

    Args:
      distmat: float [Q, G]; paths, ids and cameras aligned with its rows/columns.
      queries: query indices to show; default the first `num_queries`.
      tile_panels: (path, tile) -> the tiles shown for that image, side by side
        (`mgcam_tf.retrieval.attention_maps`: the image, Phi+ and the mask);
        None: the image alone.
    """
    distmat = np.asarray(distmat)
    nq, ng = distmat.shape
    if len(query_paths) != nq or len(gallery_paths) != ng:
        raise DataError(f"ranked list: {len(query_paths)} query and {len(gallery_paths)} "
                        f"gallery paths for a {nq} x {ng} distance matrix")
    if queries is None:
        queries = range(min(num_queries, nq))
    queries = [int(q) for q in queries]
    if not queries or min(queries) < 0 or max(queries) >= nq:
        raise ConfigError(f"ranked list: query indices must be in 0..{nq - 1}")
    gp, gc = np.asarray(gallery_pids), np.asarray(gallery_camids)

    def tile_of(path: str) -> np.ndarray:
        tile = read_tile(path, tile_height, tile_width)
        return tile if tile_panels is None else np.concatenate(tile_panels(path, tile), axis=1)

    first = tile_of(query_paths[queries[0]])
    gap = 8
    row_h, cell_w = tile_height + 16, first.shape[1] + 4
    canvas = np.full((len(queries) * row_h + 4, (top_k + 1) * cell_w + gap + 4, 3), 255, np.uint8)
    for r, q in enumerate(queries):
        junk = (gp == -1) | ((gp == query_pids[q]) & (gc == query_camids[q]))
        order = np.argsort(distmat[q], kind="stable")
        order = order[~junk[order]][:top_k]
        y = r * row_h + 14
        tile = first if r == 0 else tile_of(query_paths[q])
        draw_border(tile, BLUE)
        canvas[y:y + tile_height, 2:2 + tile.shape[1]] = tile
        draw_text(canvas, f"Q{q}", 2, y - 10, BLUE)
        for k, gidx in enumerate(order):
            tile = tile_of(gallery_paths[gidx])
            match = gp[gidx] == query_pids[q]
            draw_border(tile, GREEN if match else RED)
            x = 2 + gap + (k + 1) * cell_w
            canvas[y:y + tile_height, x:x + tile.shape[1]] = tile
            draw_text(canvas, str(k + 1), x, y - 10, GREEN if match else RED)
    return canvas


def write_ranked_list(path: str | os.PathLike, *args, **kwargs) -> None:
    """Ranked-list PNG (arguments of `ranked_list_image`), written atomically."""
    write_png(path, ranked_list_image(*args, **kwargs))
