"""What the model looked at: Phi+ of a batch, its overlay over the image (aligned with
it), the sheets with the maps beside each image, mgcam-attention over a folder, and
mgcam-search --attention's HTML sheet as a browser shows it (headless Chromium)."""

import html.parser
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from mgcam_tf.errors import ConfigError
from mgcam_tf.modeling import models
from mgcam_tf.retrieval import attention_maps, search
from mgcam_tf.retrieval.search import Match
from harness import REPO

ENV = {**os.environ, "PYTHONPATH": str(REPO)}
NAME = "mgcam_siamese_cuhk03"


@pytest.fixture(scope="module")
def model():
    return models.build_model(num_ids=4)


def write_pair(folder: pathlib.Path, name: str, seed: int, height: int = 128, width: int = 64):
    """An image and its mask (body: the left half), Market-style folders."""
    rng = np.random.default_rng(seed)
    (folder / "imgs").mkdir(parents=True, exist_ok=True)
    (folder / "imgs_seg").mkdir(exist_ok=True)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    mask = np.zeros((height, width, 1), np.uint8)
    mask[:, : width // 2] = 255
    tf.io.write_file(str(folder / "imgs" / f"{name}.png"), tf.io.encode_png(image))
    tf.io.write_file(str(folder / "imgs_seg" / f"{name}.png"), tf.io.encode_png(mask))
    return str(folder / "imgs" / f"{name}.png"), str(folder / "imgs_seg" / f"{name}.png")


def test_maps_of_a_batch_are_the_models_phi_plus(model):
    rgbm = np.random.default_rng(0).normal(size=(3, 160, 64, 4)).astype("float32")
    maps = attention_maps.attention_maps(model, rgbm)
    assert maps.shape == (3, 40, 16) and maps.min() >= 0 and maps.max() <= 1
    np.testing.assert_allclose(maps, model(rgbm, training=False)["attention"].numpy()[..., 0],
                               atol=1e-6)
    with pytest.raises(ConfigError, match="no attention"):
        attention_maps.attention_maps(models.build_model(num_ids=4, architecture="mscan"), rgbm)


def test_maps_of_files_come_with_the_masks_the_model_was_given(model, tmp_path):
    pairs = [write_pair(tmp_path, f"000{i}_c1s1_000001_01", i, 100 + 20 * i) for i in range(3)]
    images, masks = zip(*pairs)
    maps, used = attention_maps.attention_for_files(model, images, [masks[0], None, masks[2]],
                                                    batch_size=2)
    assert maps.shape == (3, 40, 16) and used.shape == (3, 160, 64)
    assert (used[0][:, :30] == 255).all() and (used[0][:, 34:] == 0).all()
    assert (used[1] == 255).all()   # no mask: all body
    # The same maps as the batch function on the pipeline's input.
    from mgcam_tf.data import layouts, pipeline

    split = layouts.Split(image_paths=tuple(images), mask_paths=(masks[0], None, masks[2]),
                          pids=np.zeros(3, np.int64), camids=np.zeros(3, np.int64))
    (batch,) = list(pipeline.eval_dataset(split, 3, mask_size_mismatch="resize"))
    np.testing.assert_allclose(maps, attention_maps.attention_maps(model, batch["rgbm"]),
                               atol=1e-6)


def test_overlay_is_aligned_with_its_image():
    image = np.full((128, 64, 3), 128, np.uint8)
    phi = np.zeros((40, 16), np.float32)
    phi[:20] = 1.0                       # attention on the upper half only
    out = attention_maps.overlay(image, phi)
    assert out.shape == image.shape and out.dtype == np.uint8
    top, bottom = out[:56].astype(int), out[72:].astype(int)
    assert (top[..., 0] > top[..., 2] + 50).all()       # red where Phi+ is high
    assert (bottom[..., 2] > bottom[..., 0] + 50).all()  # blue where it is low
    mask = np.zeros((160, 64), np.uint8)
    mask[:, 32:] = 255
    dimmed = attention_maps.masked(image, mask).astype(int)
    assert (dimmed[:, :28] < 40).all() and (dimmed[:, 36:] == 128).all()


def test_sheets_show_the_maps_beside_each_image(model, tmp_path):
    pairs = [write_pair(tmp_path, f"000{i}_c{i + 1}s1_000001_01", i) for i in range(3)]
    images, masks = map(list, zip(*pairs))
    maps, used = attention_maps.attention_for_files(model, images, masks)
    lookup = attention_maps.lookup(images, maps, used)
    results = [[Match(1, 1, images[1], 0.5), Match(2, 2, images[2], 0.7)]]
    plain = search.sheet_image(images[:1], results)
    shown = search.sheet_image(images[:1], results, attention=lookup)
    assert shown.shape[0] == plain.shape[0] and shown.shape[1] > 2.5 * plain.shape[1]
    page = search.sheet_html(images[:1], results, attention=lookup)
    assert page.count('<div class="att">') == 3 and page.count("<img") == 9
    assert "Phi+ over it" in page and 'title="Phi+ (attention)"' in page
    assert '<div class="att">' not in search.sheet_html(images[:1], results)


def test_mgcam_attention_writes_a_picture_per_image(tmp_path):
    for i in range(2):
        write_pair(tmp_path / "photos", f"000{i}_c1s1_000001_01", i)
    out = tmp_path / "att"
    proc = subprocess.run([sys.executable, "-m", "mgcam_tf.cli.attention", f"--preset={NAME}",
                           f"--image_dir={tmp_path / 'photos'}", f"--output_dir={out}",
                           "--mask_policy=files", "--noprogress"],
                          env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    pictures = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert pictures == [f"imgs/000{i}_c1s1_000001_01_attention.png" for i in range(2)]
    picture = tf.io.decode_png(tf.io.read_file(str(out / pictures[0]))).numpy()
    assert picture.shape == (320, 3 * 128, 3)


class _Rects(html.parser.HTMLParser):
    """The layout boxes of the sheet's pictures, written into the DOM by a script."""

    def __init__(self):
        super().__init__()
        self.cells: list[list[tuple[float, ...]]] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "div" and attrs.get("class") == "att":
            self.cells.append([])
        if tag == "img" and attrs.get("data-rect") and self.cells:
            self.cells[-1].append(tuple(float(v) for v in attrs["data-rect"].split(",")))


def test_search_sheet_in_a_browser_shows_the_overlays_beside_their_images(shared_data,
                                                                          tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("headless Chromium not installed (apt-get install chromium): the sheet "
                    "is not checked in a browser")
    mini = shared_data / "market1501_mini"
    query = sorted((mini / "query").glob("*.jpg"))[0]
    sheet = tmp_path / "sheet.html"
    proc = subprocess.run([sys.executable, "-m", "mgcam_tf.cli.search", f"--preset={NAME}",
                           f"--gallery={mini / 'bounding_box_test'}", "--top_k=3",
                           f"--sheet={sheet}", "--attention", str(query)],
                          env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Where the browser laid each picture out, dumped with the DOM.
    probe = tmp_path / "probe.html"
    probe.write_text(sheet.read_text().replace(
        "</body>", "<script>for (const i of document.images) { const r = "
        "i.getBoundingClientRect(); i.dataset.rect = [r.left, r.top, r.width, r.height]"
        ".join(','); }</script></body>"))
    chrome = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
              "--force-device-scale-factor=1", "--window-size=1000,700"]
    dom = subprocess.run([*chrome, "--dump-dom", probe.as_uri()], capture_output=True,
                         text=True, timeout=120)
    parser = _Rects()
    parser.feed(dom.stdout)
    assert len(parser.cells) == 4, dom.stderr[-2000:]       # the query and 3 results
    for image, phi, mask in parser.cells:
        # Side by side, the same size, on one line: the overlays align with the image.
        assert image[2:] == phi[2:] == mask[2:] == (64.0, 128.0)
        assert image[1] == phi[1] == mask[1]
        assert image[0] < phi[0] < mask[0] and phi[0] - image[0] == mask[0] - phi[0] <= 70
    shot = tmp_path / "sheet.png"
    subprocess.run([*chrome, f"--screenshot={shot}", sheet.as_uri()], capture_output=True,
                   timeout=120)
    pixels = tf.io.decode_png(tf.io.read_file(str(shot)), channels=3).numpy().astype(int)
    for image, phi, mask in parser.cells:
        def box(r):
            return pixels[int(r[1]) + 2:int(r[1] + r[3]) - 2, int(r[0]) + 2:int(r[0] + r[2]) - 2]
        # The overlay is drawn (coloured: Phi+ is red on the body, blue around it) and
        # differs from the image; the mask view darkens the background.
        assert box(phi)[..., 0].max() > 200 and box(phi)[..., 2].max() > 100
        assert np.abs(box(phi) - box(image)).mean() > 20
        assert box(mask).mean() < box(image).mean()


def test_ranked_list_draws_the_panels_beside_each_image(tmp_path):
    images = [write_pair(tmp_path, f"000{i}_c{i % 2 + 1}s1_000001_01", i)[0] for i in range(3)]
    dist = np.array([[0.0, 1.0, 2.0]])
    calls = []

    def panels(path, tile):
        calls.append(path)
        return [tile, 255 - tile]

    args = (dist, images[:1], images, np.array([0]), np.array([1]), np.array([0, 0, 1]),
            np.array([1, 2, 2]))
    from mgcam_tf.evaluation import reports

    plain = reports.ranked_list_image(*args, top_k=2)
    shown = reports.ranked_list_image(*args, top_k=2, tile_panels=panels)
    assert plain.shape == (128 + 20, 3 * 68 + 12, 3)
    assert shown.shape == (128 + 20, 3 * (128 + 4) + 12, 3)
    assert calls == [images[0], images[1], images[2]]   # the query, then its two matches


def test_mgcam_eval_ranked_list_with_attention(shared_data, tmp_path):
    out = tmp_path / "ranked.png"
    proc = subprocess.run([sys.executable, "-m", "mgcam_tf.cli.evaluate", f"--preset={NAME}",
                           f"--data_dir={shared_data / 'market1501_mini'}", "--metric=euclidean",
                           f"--ranked_png={out}", "--ranked_queries=2", "--ranked_attention",
                           "--noprogress"], env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    picture = tf.io.decode_png(tf.io.read_file(str(out))).numpy()
    assert picture.shape[:2] == (2 * 144 + 4, 11 * (3 * 64 + 4) + 12)
    # Phi+ drawn: the second panel of the query's tile is coloured, unlike a photo's greys.
    image, phi = (picture[18:14 + 124, 2 + x:x + 62].astype(int) for x in (4, 64))
    colour = [np.abs(t[..., 0] - t[..., 2]).mean() for t in (image, phi)]
    assert colour[1] > 80 and colour[1] > 2 * colour[0], colour
    refused = subprocess.run([sys.executable, "-m", "mgcam_tf.cli.evaluate",
                              f"--features={tmp_path / 'none.npz'}", f"--ranked_png={out}",
                              "--ranked_attention"], env=ENV, capture_output=True, text=True,
                             timeout=120)
    assert refused.returncode == 1
