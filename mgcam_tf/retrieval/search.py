"""Ranking a gallery for query images, and the contact sheet of the result.

Distances are Euclidean on the embeddings (h_full), the paper's base metric.
A sheet shows the model and settings, then one row per query: the query,
then its top-k gallery images with rank and distance, right and wrong
matches marked when the ids are known; HTML (self-contained: thumbnails
inline) or PNG.
"""

from __future__ import annotations

import dataclasses
import html
import os
from typing import Mapping, Sequence

import numpy as np

from mgcam_tf.errors import ConfigError, DataError
from mgcam_tf import atomic_files

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


def search(query_features: np.ndarray, gallery, top_k: int = 10, *,
           exact: bool | None = None, nprobe: int | None = None) -> list[list[Match]]:
    """Rankings of a gallery, one list per query.

    `gallery` is a `mgcam_tf.retrieval.extraction.FeatureSet` (exact search)
    or a `mgcam_tf.retrieval.index.GalleryIndex` (its own type: exact for
    flat, approximate for ivf/hnsw unless `exact=True`; `nprobe` overrides
    an IVF's stored value).
    """
    if hasattr(gallery, "search"):
        order, dist = gallery.search(query_features, top_k, exact=exact, nprobe=nprobe)
    else:
        order, dist = rank_gallery(query_features, gallery.features, top_k)
    return [[Match(rank=r + 1, index=int(i), path=gallery.paths[i], distance=float(d),
                   pid=int(gallery.pids[i]), camid=int(gallery.camids[i]))
             for r, (i, d) in enumerate(zip(row_i[row_i >= 0], row_d[row_i >= 0]))]
            for row_i, row_d in zip(order, dist)]


# ==================================================================================
# Sheets

MARK_RIGHT, MARK_WRONG = "\u2713", "\u2717"   # drawn in the PNG font too (reports._FONT)


def match_verdict(query_path: str, match: Match) -> bool | None:
    """Whether `match` shows the query's person: True (same id), False (another
    id), None (either id unknown). Ids come off the file names
    (`user_images.identity_of`: Market-style `PPPP_cC...` and the other layouts);
    the gallery's own `pid` is used when it has one."""
    from mgcam_tf.retrieval.user_images import identity_of

    query_id = identity_of(query_path)[0]
    match_id = match.pid if match.pid >= 0 else identity_of(match.path)[0]
    if query_id < 0 or match_id < 0:
        return None
    return query_id == match_id


def _settings_lines(settings: Mapping[str, object] | None) -> list[tuple[str, str]]:
    return [(str(k), str(v)) for k, v in (settings or {}).items() if v not in (None, "")]


def _thumbnail_uri(path: str, height: int = 128, width: int = 64) -> str:
    """The image as a data: URI, a JPEG thumbnail of the sheet's tile size, so
    that the page holds its pictures (it can be mailed or moved alone)."""
    from mgcam_tf.evaluation import reports

    return _jpeg_uri(reports.read_tile(path, height, width))


def _jpeg_uri(tile: np.ndarray) -> str:
    import base64

    import tensorflow as tf

    jpeg = tf.io.encode_jpeg(tile, quality=90).numpy()
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


def _attention_html(path: str, attention) -> str:
    """The image, Phi+ over it and its mask over it, side by side (`attention_maps`)."""
    from mgcam_tf.evaluation import reports
    from mgcam_tf.retrieval import attention_maps

    name = html.escape(os.path.basename(path))
    panels = attention_maps.sheet_panels(reports.read_tile(path, 128, 64), path, attention)
    return '<div class="att">' + "".join(
        f'<img class="p{i}" src="{_jpeg_uri(tile)}" alt="{name}: {what}" title="{what}">'
        for i, (tile, what) in enumerate(zip(panels, attention_maps.PANELS))) + "</div>"


def sheet_html(query_paths: Sequence[str], results: Sequence[Sequence[Match]],
               settings: Mapping[str, object] | None = None, attention=None) -> str:
    """A self-contained HTML page: the model and settings (`settings`, e.g.
    export, fingerprint, preset, top_k, distance), then per query its image and
    the ranked gallery images, right matches marked with a green frame and
    MARK_RIGHT, wrong ones with a red frame and MARK_WRONG when both ids are
    known (`match_verdict`). Thumbnails are inline (data: URIs, JPEG).

    attention: an `attention_maps.AttentionLookup`; each image is then shown
    with Phi+ and its mask over it, side by side.
    """
    uris: dict[str, str] = {}

    def img(path: str) -> str:
        if path not in uris:   # a gallery image may rank for several queries
            uris[path] = (f'<img src="{_thumbnail_uri(path)}" '
                          f'alt="{html.escape(os.path.basename(path))}">'
                          if attention is None else _attention_html(path, attention))
        return uris[path]

    from mgcam_tf.retrieval.user_images import identity_of

    rows = []
    for q, (query, matches) in enumerate(zip(query_paths, results)):
        qid = identity_of(query)[0]
        verdicts = [match_verdict(query, m) for m in matches]
        known = [v for v in verdicts if v is not None]
        tally = (f"<br>{sum(known)}/{len(known)} right" if known else "")
        cells = [f'<td class="q">{img(query)}<br><b>query {q + 1}</b>'
                 f'{f" (id {qid})" if qid >= 0 else ""}<br>'
                 f'<span class="f">{html.escape(os.path.basename(query))}</span>{tally}</td>']
        for m, verdict in zip(matches, verdicts):
            kind, mark = {True: ("right", f" {MARK_RIGHT} same id"),
                          False: ("wrong", f" {MARK_WRONG} other id"),
                          None: ("unknown", "")}[verdict]
            who = m.pid if m.pid >= 0 else identity_of(m.path)[0]
            cells.append(f'<td class="{kind}">{img(m.path)}<br>#{m.rank} d={m.distance:.3f}'
                         f'<span class="mark">{mark}</span><br>'
                         f'<span class="f">{html.escape(os.path.basename(m.path))}</span>'
                         f'{f" id {who}" if who >= 0 else ""}</td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    info = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
                   for k, v in _settings_lines(settings))
    legend = (f'<p class="legend"><span class="right">{MARK_RIGHT} same id as the query</span> '
              f'<span class="wrong">{MARK_WRONG} another id</span> (ids from the file names; '
              'no mark: unknown)'
              + ('<br>Each image, then Phi+ over it (MGCAM\'s contrastive attention, blue low, '
                 'red high), then the mask it was given (background dimmed).'
                 if attention is not None else '') + '</p>')
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>mgcam-search</title>"
            "<style>body{font:12px sans-serif}table.r td{text-align:center;font:11px sans-serif;"
            "padding:4px;border:3px solid transparent;vertical-align:top;"
            "max-width:84px}span.f{word-break:break-all}"
            "table.r img{height:128px;width:64px;object-fit:fill;display:block;margin:auto}"
            "table.r td.q{border-right:3px solid #28a}"
            "td.right,span.right{border-color:#28aa3c!important;color:#1a7a2a}"
            "td.wrong,span.wrong{border-color:#d72828!important;color:#b01e1e}"
            "span.mark{font-weight:bold}table.s th{text-align:left;padding-right:8px}"
            "div.att{display:flex;gap:2px;justify-content:center}div.att img{margin:0}"
            "table.r td:has(div.att){max-width:204px}"
            "</style></head><body><h3>mgcam-search</h3>\n"
            f'<table class="s">{info}</table>\n{legend}\n<table class="r">\n'
            + "\n".join(rows) + "\n</table></body></html>\n")


def _sheet_layout(query_paths: Sequence[str], results: Sequence[Sequence[Match]],
                  settings: Mapping[str, object] | None, tile_height: int, tile_width: int):
    """(canvas shape, tiles [(path, y, x, border colour, border width)],
    texts [(text, x, y, colour)]): what `sheet_image` draws, so that
    `sheet_labels` lists exactly the texts of the PNG."""
    from mgcam_tf.evaluation import reports
    from mgcam_tf.retrieval.user_images import identity_of

    top_k = max((len(m) for m in results), default=0)
    gap, label, line = 10, 22, 10
    cell_w = tile_width + 6
    row_h = tile_height + label + 6
    width = (top_k + 1) * cell_w + gap + 4
    chars = max(1, (width - 4) // 6)
    texts, tiles = [], []
    header = [f"{k.upper()}: {v}" for k, v in _settings_lines(settings)]
    verdicts = [[match_verdict(q, m) for m in ms] for q, ms in zip(query_paths, results)]
    if any(v is not None for row in verdicts for v in row):
        header.append(f"{MARK_RIGHT} SAME ID   {MARK_WRONG} OTHER ID")
    for i, text in enumerate(header):
        # Cut to the sheet's width (a long export path keeps its start).
        texts.append((text if len(text) <= chars else text[:chars - 2] + "..",
                      2, 3 + i * line, reports.BLACK))
    top = 3 + len(header) * line + (4 if header else 0)
    for r, (query, matches) in enumerate(zip(query_paths, results)):
        y = top + r * row_h + label
        tiles.append((query, y, 2, reports.BLUE, 4))
        qid = identity_of(query)[0]
        texts.append((f"Q{r + 1}", 2, y - 20, reports.BLUE))
        if qid >= 0:
            texts.append((f"ID {qid}", 2, y - 10, reports.BLUE))
        for k, (m, verdict) in enumerate(zip(matches, verdicts[r])):
            x = 2 + gap + (k + 1) * cell_w
            color = {True: reports.GREEN, False: reports.RED, None: reports.GREY}[verdict]
            tiles.append((m.path, y, x, color, 2 if verdict is None else 3))
            mark = {True: f" {MARK_RIGHT}", False: f" {MARK_WRONG}", None: ""}[verdict]
            texts.append((f"#{m.rank}{mark}", x, y - 20,
                          reports.BLACK if verdict is None else color))
            texts.append((f"{m.distance:.2f}", x, y - 10, reports.GREY))
    shape = (top + len(query_paths) * row_h + 4, width, 3)
    return shape, tiles, texts


def sheet_labels(query_paths: Sequence[str], results: Sequence[Sequence[Match]],
                 settings: Mapping[str, object] | None = None) -> list[str]:
    """Every text `sheet_image` prints (header, query and match labels)."""
    return [t[0] for t in _sheet_layout(query_paths, results, settings, 128, 64)[2]]


def sheet_image(query_paths: Sequence[str], results: Sequence[Sequence[Match]],
                tile_height: int = 128, tile_width: int = 64,
                settings: Mapping[str, object] | None = None, attention=None) -> np.ndarray:
    """uint8 [H, W, 3]: the settings as a header, then per query a row with the
    query (blue border) and its ranked gallery images, each with its rank and
    distance above it; right matches framed green with MARK_RIGHT, wrong ones red
    with MARK_WRONG, when the ids are known (`match_verdict`).

    attention: an `attention_maps.AttentionLookup`; each tile is then the
    image, Phi+ over it and its mask over it, side by side.
    """
    from mgcam_tf.evaluation import reports
    from mgcam_tf.retrieval import attention_maps

    panels = 1 if attention is None else len(attention_maps.PANELS)
    shape, tiles, texts = _sheet_layout(query_paths, results, settings, tile_height,
                                        tile_width * panels)
    canvas = np.full(shape, 255, np.uint8)
    for path, y, x, color, border in tiles:
        tile = np.concatenate(attention_maps.sheet_panels(
            reports.read_tile(path, tile_height, tile_width), path, attention), axis=1)
        reports.draw_border(tile, color, width=border)
        canvas[y:y + tile_height, x:x + tile.shape[1]] = tile
    for text, x, y, color in texts:
        reports.draw_text(canvas, text, x, y, color)
    return canvas


def write_sheet(path: str, query_paths: Sequence[str], results: Sequence[Sequence[Match]],
                settings: Mapping[str, object] | None = None, attention=None) -> None:
    """The sheet as HTML (`.html`, self-contained) or PNG (`.png`), written atomically.

    settings: what made it, shown at the top (model export, fingerprint,
    preset, top_k, distance, ...), in this order.
    attention: an `attention_maps.AttentionLookup` of the queries and results:
    Phi+ and the mask shown beside each image.
    """
    from mgcam_tf.evaluation import reports

    ext = os.path.splitext(path)[1].lower()
    if ext == ".html":
        atomic_files.write_bytes(path, sheet_html(query_paths, results, settings,
                                                  attention).encode())
    elif ext == ".png":
        reports.write_png(path, sheet_image(query_paths, results, settings=settings,
                                            attention=attention))
    else:
        raise ConfigError(f"{path}: the sheet must end in .html or .png")
