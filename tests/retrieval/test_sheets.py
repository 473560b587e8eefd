"""Result sheets of mgcam-search: right/wrong marks from the ids of the file names, the
self-contained HTML with its model and settings, the PNG's labels all in the font."""

import base64
import html.parser
import re

import numpy as np
import pytest
import tensorflow as tf

from mgcam_tf.evaluation import reports
from mgcam_tf.retrieval import search
from mgcam_tf.retrieval.search import Match

SETTINGS = {"export": "/exports/mgcam/3", "fingerprint": "0123456789abcdef0123",
            "preset": "mgcam_siamese_cuhk03", "gallery": "/data/gallery", "top_k": 3,
            "distance": "euclidean", "search": "exact"}


def write_image(path, seed):
    rng = np.random.default_rng(seed)
    tf.io.write_file(str(path), tf.io.encode_png(
        rng.integers(0, 256, (100 + seed, 50, 3), dtype=np.uint8)))
    return str(path)


@pytest.fixture()
def market(tmp_path):
    """Two Market-style queries and their rankings: right, wrong, and an id-less match."""
    names = ["0002_c1s1_000451_03.jpg", "0002_c3s2_000101_01.png", "0007_c2s1_000301_02.png",
             "holiday_photo.png", "0007_c1s1_000001_01.png"]
    (tmp_path / "g").mkdir()
    paths = [write_image(tmp_path / "g" / n.replace(".jpg", ".png"), i)
             for i, n in enumerate(names)]
    queries = [paths[0], paths[4]]
    results = [[Match(1, 1, paths[1], 0.4), Match(2, 2, paths[2], 0.61, pid=7),
                Match(3, 3, paths[3], 0.9)],
               [Match(1, 2, paths[2], 0.2, pid=7), Match(2, 1, paths[1], 0.75)]]
    return queries, results


def test_match_verdict_from_ids(market):
    queries, results = market
    verdicts = [[search.match_verdict(q, m) for m in ms] for q, ms in zip(queries, results)]
    # 0002 = 0002 right; 0007 wrong; a name without an id: unknown.
    assert verdicts == [[True, False, None], [True, False]]
    # The gallery's own pid wins over the file name.
    assert search.match_verdict(queries[0], Match(1, 0, "/x/0009_c1_a.jpg", 0.1, pid=2))
    # An id-less query: nothing is marked.
    assert search.match_verdict("/x/me.jpg", results[0][0]) is None


class _Page(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.srcs, self.links, self.cells = [], [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.srcs.append(attrs["src"])
        if tag in ("link", "script", "a") and (attrs.get("href") or attrs.get("src")):
            self.links.append(attrs)
        if tag == "td" and attrs.get("class"):
            self.cells.append(attrs["class"])


def test_html_is_self_contained_and_states_model_and_settings(market, tmp_path):
    queries, results = market
    path = tmp_path / "out" / "sheet.html"
    path.parent.mkdir()
    search.write_sheet(str(path), queries, results, SETTINGS)
    page = path.read_text(encoding="utf-8")
    parser = _Page()
    parser.feed(page)
    # Every picture inline, and no other resource fetched.
    assert len(parser.srcs) == 2 + 5 and not parser.links
    for src in parser.srcs:
        assert src.startswith("data:image/jpeg;base64,")
        jpeg = base64.b64decode(src.split(",", 1)[1])
        assert tf.io.decode_jpeg(jpeg).shape == (128, 64, 3)
    assert "file:" not in page and str(tmp_path) not in page.replace(str(tmp_path / "g"), "")
    # Model and settings, each stated.
    for key, value in SETTINGS.items():
        assert re.search(rf"<th>{key}</th><td>{re.escape(str(value))}</td>", page), key
    # Right, wrong, unknown per cell, with a mark in text as well as colour.
    assert parser.cells == ["q", "right", "wrong", "unknown", "q", "right", "wrong"]
    rankings = page.split('<p class="legend">')[1].split("</p>")[1]
    assert rankings.count(f"{search.MARK_RIGHT} same id") == 2
    assert rankings.count(f"{search.MARK_WRONG} other id") == 2
    assert "1/2 right" in page and "(id 2)" in page and "(id 7)" in page


def test_png_marks_and_every_label_has_a_glyph(market, tmp_path):
    queries, results = market
    labels = search.sheet_labels(queries, results, SETTINGS)
    text = "".join(labels)
    assert "#1 " + search.MARK_RIGHT in labels and "#2 " + search.MARK_WRONG in labels
    assert "#3" in labels and "0.61" in labels and "ID 2" in labels
    assert any(label.startswith("FINGERPRINT: 0123") for label in labels)
    assert reports.missing_glyphs(text) == set(), reports.missing_glyphs(text)
    # '#' used to print as a blank: now drawn.
    canvas = np.full((10, 10, 3), 255, np.uint8)
    reports.draw_text(canvas, "#", 0, 0)
    assert (canvas == 0).any()
    search.write_sheet(str(tmp_path / "s.png"), queries, results, SETTINGS)
    sheet = tf.io.decode_png(tf.io.read_file(str(tmp_path / "s.png"))).numpy()
    green = np.all(sheet == reports.GREEN, axis=-1).sum()
    red = np.all(sheet == reports.RED, axis=-1).sum()
    assert green > 2 * 3 * 128 and red > 2 * 3 * 128   # two framed tiles of each


def test_font_covers_the_characters_of_names_and_numbers():
    import string

    used = string.ascii_letters + string.digits + "#%()=_-.:/,+ " + search.MARK_RIGHT
    assert reports.missing_glyphs(used + search.MARK_WRONG) == set()
    assert reports.missing_glyphs("é") == {"É"}


def test_sheet_without_ids_or_settings_has_no_marks(tmp_path):
    paths = [write_image(tmp_path / f"img{i}.png", i) for i in range(3)]
    results = [[Match(1, 1, paths[1], 0.3), Match(2, 2, paths[2], 0.5)]]
    labels = search.sheet_labels(paths[:1], results)
    assert labels == ["Q1", "#1", "0.30", "#2", "0.50"]
    rankings = search.sheet_html(paths[:1], results).split('<p class="legend">')[1]
    rankings = rankings.split("</p>")[1]
    assert 'class="right"' not in rankings and 'class="wrong"' not in rankings
    assert "same id" not in rankings and "<th>" not in rankings
