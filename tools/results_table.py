"""Results table and figures of docs/RESULTS.md from the JSONs tools/reproduce.sh writes.

  python tools/results_table.py --runs_dir=runs/cuhk03_pair1 --out_dir=docs \
      --attention_row=mgcam_rgbm --data_dir=../shared/data/cuhk03_pair1

Reads <runs_dir>/<row>/eval_<metric>.json (mgcam-eval --json_out) and prints
and writes <out_dir>/results_table.md: one line per row, rank-1 / mAP (%) per
metric. With figures on (the default) it also writes, under <out_dir>/figures/:
  training_loss.png     total training loss of every row over iterations
  loss_terms_<row>.png  the loss terms of each MGCAM row
  rank1_curve.png       rank-1 and mAP (Euclidean) of --curve_row over iterations
                        (<runs_dir>/<row>/curve/step_<N>.json + its final eval)
  attention_maps.png    Phi+ of a few query images of --attention_row beside their masks
Missing inputs are skipped with a line saying so; no plotting library is used.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from mgcam_tf.evaluation import reports  # noqa: E402  (numpy only, no TF)

ROWS = [("mscan_rgb", "MSCAN-body, RGB"),
        ("mscan_rgbm", "MSCAN-body, RGB-M"),
        ("mgcam_hard_rgbm", "MGCAM hard attention, RGB-M"),
        ("mgcam_rgb", "MGCAM, RGB"),
        ("mgcam_rgbm", "MGCAM, RGB-M"),
        ("mgcam_siamese_rgbm", "MGCAM-Siamese, RGB-M")]
METRICS = [("euclidean", "Euclidean"), ("xqda", "XQDA"), ("kissme", "KISSME"),
           ("rerank", "Re-ranking"), ("xqda+rerank", "XQDA + re-ranking")]
# Letters the built-in 5x7 font of mgcam_tf.evaluation.reports lacks (added for this
# script's labels only; existing glyphs are left as they are).
_EXTRA_GLYPHS = {
    "B": "11110 10001 10001 11110 10001 10001 11110",
    "F": "11111 10000 10000 11110 10000 10000 10000",
    "H": "10001 10001 10001 11111 10001 10001 10001",
    "J": "00111 00010 00010 00010 00010 10010 01100",
    "V": "10001 10001 10001 10001 10001 01010 00100",
    "W": "10001 10001 10001 10101 10101 10101 01010",
    "Z": "11111 00001 00010 00100 01000 10000 11111",
    "_": "00000 00000 00000 00000 00000 00000 11111",
}
for _ch, _rows in _EXTRA_GLYPHS.items():
    reports._FONT.setdefault(_ch, np.array([[b == "1" for b in r] for r in _rows.split()]))

COLORS = [(40, 90, 215), (215, 40, 40), (40, 170, 60), (150, 150, 150),
          (230, 140, 20), (140, 50, 180)]


def read_results(runs_dir: str, rows=ROWS, metrics=METRICS) -> dict:
    """{row: {metric: {"rank1": .., "mAP": .., ...}}} of the eval JSONs that exist."""
    results = {}
    for row, _ in rows:
        for metric, _ in metrics:
            path = os.path.join(runs_dir, row, f"eval_{metric}.json")
            if os.path.isfile(path):
                with open(path) as f:
                    results.setdefault(row, {})[metric] = json.load(f)
    return results


def table_markdown(results: dict, rows=ROWS, metrics=METRICS) -> str:
    """Markdown table: rank-1 / mAP in % per metric; '-' where a JSON is missing."""
    head = "| model | " + " | ".join(f"{label} R1 / mAP" for _, label in metrics) + " |"
    lines = [head, "| --- |" + " --- |" * len(metrics)]
    for row, label in rows:
        cells = []
        for metric, _ in metrics:
            r = results.get(row, {}).get(metric)
            cells.append("-" if r is None else f"{100 * r['rank1']:.2f} / {100 * r['mAP']:.2f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# -- figures -----------------------------------------------------------------------

def read_scalars(log_dir: str) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] sorted by step from every TensorBoard event file in log_dir."""
    import tensorflow as tf

    series: dict[str, dict[int, float]] = {}
    for path in sorted(glob.glob(os.path.join(log_dir, "events.*"))):
        try:
            for event in tf.compat.v1.train.summary_iterator(path):
                for value in event.summary.value:
                    if value.HasField("tensor"):
                        array = tf.make_ndarray(value.tensor)
                        if array.size != 1 or array.dtype.kind not in "fiu":
                            continue  # images and text
                        number = float(array.reshape(()))
                    elif value.HasField("simple_value"):
                        number = float(value.simple_value)
                    else:
                        continue
                    series.setdefault(value.tag, {})[int(event.step)] = number
        except tf.errors.DataLossError:  # a file still being written: keep what was read
            pass
    return {tag: sorted(points.items()) for tag, points in series.items()}


def line_plot(series: dict[str, list[tuple[float, float]]], x_label: str, y_label: str,
              width: int = 720, height: int = 420, y_range=None) -> np.ndarray:
    """uint8 [H, W, 3] plot of up to 6 labelled polylines (legend top right)."""
    canvas = np.full((height, width, 3), 255, np.uint8)
    series = {k: v for k, v in series.items() if v}
    left, right, top, bottom = 70, width - 20, 24, height - 50
    if not series:
        reports.draw_text(canvas, "NO DATA", width // 2 - 20, height // 2)
        return canvas
    xs = [x for pts in series.values() for x, _ in pts]
    ys = [y for pts in series.values() for _, y in pts]
    x0, x1 = min(xs), max(xs)
    y0, y1 = y_range if y_range else (min(ys), max(ys))
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:
        y1 = y0 + 1

    def px(x):
        return left + (x - x0) / (x1 - x0) * (right - left)

    def py(y):
        return bottom - (y - y0) / (y1 - y0) * (bottom - top)

    for i in range(6):
        value = y0 + (y1 - y0) * i / 5
        reports.draw_line(canvas, left, py(value), right, py(value), (225, 225, 225))
        reports.draw_text(canvas, f"{value:.3g}", 4, int(py(value)) - 3)
    for i in range(6):
        value = x0 + (x1 - x0) * i / 5
        reports.draw_line(canvas, px(value), bottom, px(value), bottom + 4)
        label = f"{value:.0f}"
        reports.draw_text(canvas, label, int(px(value)) - 3 * len(label), bottom + 8)
    reports.draw_line(canvas, left, top, left, bottom)
    reports.draw_line(canvas, left, bottom, right, bottom)
    reports.draw_text(canvas, x_label, (left + right) // 2 - 3 * len(x_label), bottom + 26)
    reports.draw_text(canvas, y_label, 4, 6)
    for idx, (label, pts) in enumerate(series.items()):
        color = COLORS[idx % len(COLORS)]
        coords = [(px(x), py(min(max(y, y0), y1))) for x, y in pts]
        for (xa, ya), (xb, yb) in zip(coords[:-1], coords[1:]):
            reports.draw_line(canvas, xa, ya, xb, yb, color, width=2)
        if len(coords) == 1:
            reports.draw_line(canvas, coords[0][0] - 2, coords[0][1], coords[0][0] + 2,
                              coords[0][1], color, width=3)
        legend_y = top + 4 + 14 * idx
        reports.draw_line(canvas, right - 250, legend_y + 3, right - 230, legend_y + 3,
                          color, width=2)
        reports.draw_text(canvas, label, right - 224, legend_y, color)
    return canvas


def loss_figures(runs_dir: str, fig_dir: str, rows=ROWS) -> list[str]:
    written = []
    totals = {}
    for row, _ in rows:
        log_dir = os.path.join(runs_dir, row, "logs")
        if not os.path.isdir(log_dir):
            print(f"no logs for {row}: skipped in the loss plots")
            continue
        scalars = read_scalars(log_dir)
        if "loss" in scalars:
            totals[row] = scalars["loss"]
        terms = {tag: pts for tag, pts in scalars.items()
                 if tag.endswith("loss") and tag != "loss"}
        if terms and row.startswith("mgcam"):
            path = os.path.join(fig_dir, f"loss_terms_{row}.png")
            # The terms differ by orders of magnitude: plot log10 of each.
            logged = {f"log10 {t}": [(s, float(np.log10(max(v, 1e-6)))) for s, v in pts]
                      for t, pts in sorted(terms.items())[:6]}
            reports.write_png(path, line_plot(logged, "ITERATION", f"LOG10 LOSS TERMS {row}"))
            written.append(path)
    if totals:
        path = os.path.join(fig_dir, "training_loss.png")
        reports.write_png(path, line_plot(totals, "ITERATION", "TOTAL TRAINING LOSS"))
        written.append(path)
    return written


def rank1_figure(runs_dir: str, fig_dir: str, row: str) -> tuple[str | None, list]:
    """rank-1 / mAP (Euclidean) of `row` over iterations; returns the path and the points."""
    points = []
    for path in glob.glob(os.path.join(runs_dir, row, "curve", "step_*.json")):
        step = int(re.search(r"step_(\d+)\.json$", path).group(1))
        with open(path) as f:
            r = json.load(f)
        points.append((step, r["rank1"], r["mAP"]))
    final = os.path.join(runs_dir, row, "eval_euclidean.json")
    config = os.path.join(runs_dir, row, "config.json")
    if os.path.isfile(final) and os.path.isfile(config):
        with open(config) as f:
            step = int(json.load(f)["settings"]["total_steps"])
        with open(final) as f:
            r = json.load(f)
        points.append((step, r["rank1"], r["mAP"]))
    points.sort()
    if not points:
        print(f"no rank-1 curve points for {row}: skipped")
        return None, []
    path = os.path.join(fig_dir, "rank1_curve.png")
    image = line_plot({"rank-1 %": [(s, 100 * a) for s, a, _ in points],
                       "mAP %": [(s, 100 * m) for s, _, m in points]},
                      "ITERATION", f"EUCLIDEAN RANK-1 AND MAP {row}")
    reports.write_png(path, image)
    return path, points


def attention_figure(runs_dir: str, fig_dir: str, row: str, data_dir: str,
                     num_images: int = 6) -> str | None:
    """Query images, their masks and Phi+ (40x16, nearest-upscaled to 160x64) side by side."""
    if not (data_dir and os.path.isdir(os.path.join(runs_dir, row, "checkpoints"))):
        print(f"no checkpoint of {row} or no --data_dir: attention maps skipped")
        return None
    import tensorflow as tf

    from mgcam_tf import training
    from mgcam_tf.data import layouts, preprocess

    model = training.load_trained_model(os.path.join(runs_dir, row))
    query = layouts.load_dataset(data_dir, layout="market1501").query
    # Evenly spread query images (different ids).
    picks = np.linspace(0, len(query) - 1, num_images).astype(int)
    tiles = []
    for i in picks:
        image = preprocess.decode_image(tf.io.read_file(query.image_paths[i]))
        mask = preprocess.decode_mask(tf.io.read_file(query.mask_paths[i]))
        x = preprocess.preprocess(image, mask)
        phi = model({"rgbm": x["rgbm"][None]}, training=False)["attention"][0, :, :, 0].numpy()
        rgb = preprocess.resize_to_input(image).numpy()
        mask_rgb = np.repeat(preprocess.resize_to_input(mask).numpy(), 3, axis=2)
        phi_big = np.kron(np.clip(phi, 0, 1), np.ones((4, 4)))
        phi_rgb = np.repeat((255 * phi_big).astype(np.uint8)[:, :, None], 3, axis=2)
        gap = np.full((160, 2, 3), 255, np.uint8)
        tiles.append(np.concatenate([rgb, gap, mask_rgb, gap, phi_rgb], axis=1))
        tiles.append(np.full((160, 8, 3), 255, np.uint8))
    strip = np.concatenate(tiles[:-1], axis=1)
    canvas = np.full((strip.shape[0] + 20, strip.shape[1], 3), 255, np.uint8)
    canvas[20:] = strip
    reports.draw_text(canvas, f"IMAGE / MASK / PHI+ ({row})", 2, 6)
    path = os.path.join(fig_dir, "attention_maps.png")
    reports.write_png(path, canvas)
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs_dir", default="runs/cuhk03_pair1")
    parser.add_argument("--out_dir", default="docs")
    parser.add_argument("--data_dir", default="", help="data set (for the attention maps)")
    parser.add_argument("--attention_row", default="mgcam_rgbm")
    parser.add_argument("--curve_row", default="mgcam_rgbm")
    parser.add_argument("--figures", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--rows", default="", help="comma-separated run folders to tabulate "
                        "instead of the six rows of the table (labelled by folder name)")
    args = parser.parse_args(argv)

    rows = ROWS
    if args.rows:
        rows = [(name, name) for name in args.rows.split(",") if name]
    results = read_results(args.runs_dir, rows)
    table = table_markdown(results, rows)
    print(table, end="")
    os.makedirs(args.out_dir, exist_ok=True)
    reports.write_atomic(os.path.join(args.out_dir, "results_table.md"), table.encode())
    if args.figures:
        fig_dir = os.path.join(args.out_dir, "figures")
        os.makedirs(fig_dir, exist_ok=True)
        for path in loss_figures(args.runs_dir, fig_dir, rows):
            print(f"wrote {path}")
        path, points = rank1_figure(args.runs_dir, fig_dir, args.curve_row)
        if path:
            print(f"wrote {path}")
            for step, r1, m in points:
                print(f"{args.curve_row} step {step}: rank-1 {100 * r1:.2f} mAP {100 * m:.2f}")
        path = attention_figure(args.runs_dir, fig_dir, args.attention_row, args.data_dir)
        if path:
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
