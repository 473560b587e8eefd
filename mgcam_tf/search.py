"""Ranking a gallery for query images, and the contact sheet of the result.

Distances are Euclidean on the embeddings (h_full), the paper's base metric.
A sheet shows one row per query: the query, then its top-k gallery images
with rank and distance; HTML (links to the image files) or PNG (the images
drawn in, for sharing).
"""

from __future__ import annotations

import dataclasses
import html
import os
import pathlib
from typing import Sequence

import numpy as np

from mgcam_tf.errors import ConfigError, DataError

SHEET_FORMATS = (".html", ".png")


@dataclasses.dataclass(frozen=True)
class Match:
    """One gallery image in a query's ranking."""

    rank: int           # 1-based
    index: int          # row of the gallery
    path: str
    distance: float
    pid: int = -1
    camid: int = -1


def rank_gallery(query_features: np.ndarray, gallery_features: np.ndarray,
                 top_k: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """The top_k nearest gallery rows of each query.

    Args:
      query_features: float [Q, D]; gallery_features: float [G, D].
    Returns:
      (indices int64 [Q, k], distances float32 [Q, k]), k = min(top_k, G),
      nearest first (ties in gallery order).
    """
    q = np.asarray(query_features, np.float64)
    g = np.asarray(gallery_features, np.float64)
    if q.ndim != 2 or g.ndim != 2 or q.shape[1] != g.shape[1] or len(g) == 0:
        raise DataError(f"query features {q.shape} and gallery features {g.shape} must be "
                        "[Q, D] and [G, D] with the same D and G >= 1")
    if top_k < 1:
        raise ConfigError(f"top_k must be >= 1, got {top_k}")
    d2 = np.sum(q * q, 1)[:, None] + np.sum(g * g, 1)[None, :] - 2.0 * (q @ g.T)
    dist = np.sqrt(np.maximum(d2, 0.0))
    k = min(top_k, g.shape[0])
    order = np.argsort(dist, axis=1, kind="stable")[:, :k]
    return order.astype(np.int64), np.take_along_axis(dist, order, 1).astype(np.float32)


def search(query_features: np.ndarray, gallery, top_k: int = 10) -> list[list[Match]]:
    """Rankings of a `mgcam_tf.extraction.FeatureSet` gallery, one list per query."""
    order, dist = rank_gallery(query_features, gallery.features, top_k)
    return [[Match(rank=r + 1, index=int(i), path=gallery.paths[i], distance=float(d),
                   pid=int(gallery.pids[i]), camid=int(gallery.camids[i]))
             for r, (i, d) in enumerate(zip(row_i, row_d))]
            for row_i, row_d in zip(order, dist)]


# ==================================================================================
# Sheets

def sheet_html(query_paths: Sequence[str], results: Sequence[Sequence[Match]],
               base_dir: str) -> str:
    """An HTML page: per query, its image then the ranked gallery images.

    Image links are relative to `base_dir` (the page's folder) so that the
    page and the images can be moved together.
    """
    def src(path: str) -> str:
        return html.escape(pathlib.Path(os.path.relpath(os.path.abspath(path), base_dir)).as_posix())

    rows = []
    for q, (query, matches) in enumerate(zip(query_paths, results)):
        cells = [f'<td class="q"><img src="{src(query)}"><br>query {q + 1}<br>'
                 f'{html.escape(os.path.basename(query))}</td>']
        for m in matches:
            who = f"id {m.pid}" if m.pid >= 0 else ""
            cells.append(f'<td><img src="{src(m.path)}"><br>#{m.rank} d={m.distance:.3f}<br>'
                         f'{html.escape(os.path.basename(m.path))} {who}</td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>mgcam-search</title>"
            "<style>td{text-align:center;font:11px sans-serif;padding:4px}"
            "img{height:128px;width:64px;object-fit:fill}td.q{border-right:3px solid #28a}"
            "</style></head><body><table>\n" + "\n".join(rows) + "\n</table></body></html>\n")


def _tile(path: str, height: int, width: int) -> np.ndarray:
    import tensorflow as tf

    try:
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    except (tf.errors.OpError, ValueError) as err:
        raise DataError(f"{path}: cannot read image for the sheet "
                        f"({str(err).splitlines()[0]})") from None
    image = tf.image.resize(image, (height, width), method="bilinear", antialias=True)
    return np.clip(np.rint(image.numpy()), 0, 255).astype(np.uint8)


def sheet_image(query_paths: Sequence[str], results: Sequence[Sequence[Match]],
                tile_height: int = 128, tile_width: int = 64) -> np.ndarray:
    """uint8 [H, W, 3]: per query a row with the query (blue border) and its
    ranked gallery images, each with its rank and distance above it."""
    from mgcam_tf.evaluation import reports

    top_k = max((len(m) for m in results), default=0)
    gap, label = 10, 22
    cell_w = tile_width + 6
    row_h = tile_height + label + 6
    canvas = np.full((len(query_paths) * row_h + 4, (top_k + 1) * cell_w + gap + 4, 3), 255,
                     np.uint8)
    for r, (query, matches) in enumerate(zip(query_paths, results)):
        y = r * row_h + label
        tile = _tile(query, tile_height, tile_width)
        reports.draw_border(tile, reports.BLUE)
        canvas[y:y + tile_height, 2:2 + tile_width] = tile
        reports.draw_text(canvas, f"Q{r + 1}", 2, y - 18, reports.BLUE)
        for k, m in enumerate(matches):
            x = 2 + gap + (k + 1) * cell_w
            tile = _tile(m.path, tile_height, tile_width)
            reports.draw_border(tile, reports.GREY, width=2)
            canvas[y:y + tile_height, x:x + tile_width] = tile
            reports.draw_text(canvas, f"#{m.rank}", x, y - 20)
            reports.draw_text(canvas, f"{m.distance:.2f}", x, y - 10, reports.GREY)
    return canvas


def write_sheet(path: str, query_paths: Sequence[str], results: Sequence[Sequence[Match]]) -> None:
    """The sheet as HTML (`.html`) or PNG (`.png`), written atomically."""
    from mgcam_tf.evaluation import reports

    ext = os.path.splitext(path)[1].lower()
    if ext == ".html":
        base = os.path.dirname(os.path.abspath(path))
        reports.write_atomic(path, sheet_html(query_paths, results, base).encode())
    elif ext == ".png":
        reports.write_png(path, sheet_image(query_paths, results))
    else:
        raise ConfigError(f"{path}: the sheet must end in .html or .png")
