"""Results table, intervals and figures of docs/RESULTS.md from what tools/reproduce.sh writes.

  python tools/results_table.py --runs_dir=docs/results/cuhk03_pair1 --out_dir=docs \
      --data_dir=../shared/data/cuhk03_pair1 --weights_dir=runs/cuhk03_pair1

Reads <runs_dir>/<row>_s<seed>/eval_<metric>_<protocol>.json (mgcam-eval --json_out
--per_query) for every row and seed there is, and writes <out_dir>/results_table.md:
per protocol, rank-1 / mAP (%) per metric as the mean +- standard deviation over
seeds (n seeds); then the paired bootstrap 95 % intervals of the comparisons of
the paper's claims (per-query scores averaged over the seeds both rows have);
then each row's training time (and with --curves each run's in-training rank-1 at
the steps asked). With figures on (the default), under <out_dir>/figures/:
  training_loss.png     total training loss of every row (seed 0) over iterations
  loss_terms_<row>.png  the loss terms of each MGCAM row (seed 0)
  rank1_curve.png       Euclidean rank-1 of every row (seed 0) over iterations,
                        from eval_history.json (the evaluation callback)
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

from mgcam_tf import atomic_files  # noqa: E402
from mgcam_tf.evaluation import bootstrap, reports  # noqa: E402  (numpy only, no TF)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run_record  # noqa: E402  (tools/run_record.py)

ROWS = [("mscan_rgb", "MSCAN-body, RGB"),
        ("mscan_rgbm", "MSCAN-body, RGB-M"),
        ("mgcam_hard_rgbm", "MGCAM hard attention, RGB-M"),
        ("mgcam_rgb", "MGCAM, RGB"),
        ("mgcam_rgbm", "MGCAM, RGB-M"),
        ("mgcam_siamese_rgbm", "MGCAM-Siamese, RGB-M")]
METRICS = [("euclidean", "Euclidean"), ("xqda", "XQDA"), ("kissme", "KISSME"),
           ("rerank", "Re-ranking"), ("xqda+rerank", "XQDA + re-ranking")]
PROTOCOLS = [("single_query", "single query (200 queries)"),
             ("all_queries", "all queries (975: every test image against the other camera)")]
# The paper's claims as (label, row a, row b): the interval is of b - a.
COMPARISONS = [("MGCAM vs MSCAN-body (RGB-M)", "mscan_rgbm", "mgcam_rgbm"),
               ("RGB-M vs RGB (MSCAN-body)", "mscan_rgb", "mscan_rgbm"),
               ("RGB-M vs RGB (MGCAM)", "mgcam_rgb", "mgcam_rgbm"),
               ("soft vs hard attention (MGCAM RGB-M)", "mgcam_hard_rgbm", "mgcam_rgbm"),
               ("Siamese vs not (MGCAM RGB-M)", "mgcam_rgbm", "mgcam_siamese_rgbm")]
COLORS = [(40, 90, 215), (215, 40, 40), (40, 170, 60), (150, 150, 150),
          (230, 140, 20), (140, 50, 180)]


# The check runs (tools/reproduce.sh): seed 0 of a row trained once more, in folders
# `<row>_s0<suffix>`, against seed 0 of the table. In float32, the precision check; in the
# table's precision again, the same seed's run-to-run difference (training on CPU is not
# bitwise deterministic), the noise the precision check is read against beside the seeds'.
CHECKS = (("_float32", "float32", ("mgcam_rgbm", "mgcam_siamese_rgbm")),
          ("_repeat", "trained again", ("mgcam_rgbm",)))


def seed_dirs(runs_dir: str, row: str, suffix: str = "") -> dict[int, str]:
    """{seed: folder} of the row's runs (`<row>_s<seed><suffix>`). runs_dir may name
    several folders, comma-separated; where two hold the same run, the first wins."""
    found = {}
    for folder in reversed(runs_dir.split(",")):
        for path in glob.glob(os.path.join(folder, f"{row}_s*")):
            m = re.fullmatch(re.escape(row) + r"_s(\d+)" + re.escape(suffix),
                             os.path.basename(path))
            if m and os.path.isdir(path):
                found[int(m.group(1))] = path
    return dict(sorted(found.items()))


def read_results(runs_dir: str, rows=ROWS, metrics=METRICS, protocols=PROTOCOLS,
                 suffix: str = "") -> dict:
    """{(row, metric, protocol): {seed: eval JSON}} of the JSONs that exist."""
    results = {}
    for row, _ in rows:
        for seed, folder in seed_dirs(runs_dir, row, suffix).items():
            for metric, _ in metrics:
                for protocol, _ in protocols:
                    path = os.path.join(folder, f"eval_{metric}_{protocol}.json")
                    if os.path.isfile(path):
                        with open(path) as f:
                            results.setdefault((row, metric, protocol), {})[seed] = json.load(f)
    return results


def _percents(runs: dict) -> tuple[np.ndarray, np.ndarray]:
    """(rank-1, mAP) in % of each run's eval JSON."""
    return (100 * np.array([r["rank1"] for r in runs.values()]),
            100 * np.array([r["mAP"] for r in runs.values()]))


def _cell(runs: dict) -> str:
    if not runs:
        return "-"
    r1, ap = _percents(runs)
    if len(runs) == 1:
        return f"{r1[0]:.2f} / {ap[0]:.2f} (1)"
    return (f"{r1.mean():.2f} ± {r1.std(ddof=1):.2f} / {ap.mean():.2f} ± {ap.std(ddof=1):.2f}"
            f" ({len(runs)})")


def table_markdown(results: dict, rows=ROWS, metrics=METRICS, protocols=PROTOCOLS) -> str:
    """Per protocol, a table of rank-1 / mAP in % (mean ± std over seeds, and their count)."""
    lines = []
    for protocol, title in protocols:
        lines += [f"**{title}**", "",
                  "| model | " + " | ".join(f"{label} R1 / mAP" for _, label in metrics) + " |",
                  "| --- |" + " --- |" * len(metrics)]
        for row, label in rows:
            cells = [_cell(results.get((row, metric, protocol), {})) for metric, _ in metrics]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _per_query(runs: dict, seeds) -> tuple[np.ndarray, np.ndarray]:
    """(AP, rank-1 hit) per query, averaged over `seeds`."""
    aps = [np.array([np.nan if a is None else a for a in runs[s]["per_query"]["ap"]])
           for s in seeds]
    hits = [bootstrap.rank1_hits(np.array(runs[s]["per_query"]["first_match"])) for s in seeds]
    return np.mean(aps, axis=0), np.mean(hits, axis=0)


def _interval_cell(a: np.ndarray, b: np.ndarray) -> str:
    """b - a over the queries, in points, with its paired bootstrap 95 % interval."""
    d = bootstrap.paired_bootstrap(a, b)
    return f"{100 * d.difference:+.2f} [{100 * d.low:+.2f}, {100 * d.high:+.2f}]"


def intervals_markdown(results: dict, metric: str = "euclidean", protocols=PROTOCOLS,
                       comparisons=COMPARISONS) -> str:
    """Paired bootstrap 95 % intervals (10,000 resamples of the queries) of b - a."""
    lines = [f"| comparison ({metric}) | protocol | seeds | rank-1 b - a [95 % CI] | "
             "mAP b - a [95 % CI] |", "| --- | --- | --- | --- | --- |"]
    for label, a, b in comparisons:
        for protocol, _ in protocols:
            ra = results.get((a, metric, protocol), {})
            rb = results.get((b, metric, protocol), {})
            seeds = sorted(set(ra) & set(rb))
            seeds = [s for s in seeds if "per_query" in ra[s] and "per_query" in rb[s]]
            if not seeds:
                lines.append(f"| {label} | {protocol} | - | not run yet | not run yet |")
                continue
            ap_a, hit_a = _per_query(ra, seeds)
            ap_b, hit_b = _per_query(rb, seeds)
            cells = [_interval_cell(hit_a, hit_b), _interval_cell(ap_a, ap_b)]
            lines.append(f"| {label} | {protocol} | {','.join(map(str, seeds))} | "
                         + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def checks_markdown(runs_dir: str, results: dict, metric: str = "euclidean",
                    protocols=PROTOCOLS, checks=CHECKS) -> str:
    """Per check, row and protocol: seed 0 of the table (b) minus the check run (a),
    paired bootstrap 95 % interval over the queries, beside the standard deviation over
    the table's seeds of that row, the seed noise it is read against. Empty when no
    check run is there."""
    lines = []
    for suffix, label, rows in checks:
        check = read_results(runs_dir, [(row, row) for row in rows], [(metric, metric)],
                             protocols, suffix)
        for row in rows:
            precisions = None
            for protocol, _ in protocols:
                a = check.get((row, metric, protocol), {}).get(0)
                seeds = results.get((row, metric, protocol), {})
                b = seeds.get(0)
                if a is None or b is None or "per_query" not in a or "per_query" not in b:
                    lines.append(f"| {row} | {label} | {protocol} | - | not run yet | "
                                 "not run yet | - |")
                    continue
                if precisions is None:
                    precisions = " → ".join(
                        _settings(seed_dirs(runs_dir, row, s)[0]).get("mixed_precision", "?")
                        for s in (suffix, ""))
                ap_a, hit_a = _per_query({0: a}, [0])
                ap_b, hit_b = _per_query({0: b}, [0])
                spread = "-"
                if len(seeds) > 1:
                    r1, ap = _percents(seeds)
                    spread = f"{r1.std(ddof=1):.2f} / {ap.std(ddof=1):.2f} ({len(seeds)})"
                lines.append(f"| {row} | {label} | {protocol} | {precisions} | "
                             f"{_interval_cell(hit_a, hit_b)} | {_interval_cell(ap_a, ap_b)} | "
                             f"{spread} |")
    if all("not run yet" in line for line in lines):
        return ""
    return "\n".join([f"| row, seed 0 ({metric}) | seed 0 again | protocol | precisions a → b | "
                      "rank-1 b - a [95 % CI] | mAP b - a [95 % CI] | "
                      "rank-1 / mAP sd over seeds (n) |",
                      "| --- | --- | --- | --- | --- | --- | --- |"] + lines) + "\n"


def _settings(folder: str) -> dict:
    """A run's {setting: value}, from either config.json format."""
    from mgcam_tf.training.config import run_settings

    with open(os.path.join(folder, "config.json")) as f:
        return run_settings(json.load(f))


# A logging interval this many times slower per step than the run's median was a stop (a
# crash or a kill before a resume, or a pause), not training: evaluations and checkpoints
# slow an interval two or three times at most.
STOPPED_FACTOR = 10.0


def training_minutes(times: list[tuple[int, float]]) -> tuple[float, float]:
    """(minutes training, minutes stopped) of a run's [(step, wall time)], first to last.

    An interval that took more than STOPPED_FACTOR times the median seconds per step
    counts as its steps at the median pace, the rest as stopped; an interval whose step
    does not advance (a resume that repeats logged steps) counts as stopped."""
    times = sorted(times, key=lambda point: point[1])
    paces = [(t1 - t0) / (s1 - s0) for (s0, t0), (s1, t1) in zip(times, times[1:]) if s1 > s0]
    if not paces:
        return 0.0, 0.0
    median = float(np.median(paces))
    training = stopped = 0.0
    for (s0, t0), (s1, t1) in zip(times, times[1:]):
        seconds = t1 - t0
        if s1 <= s0:
            stopped += seconds
        elif seconds > STOPPED_FACTOR * median * (s1 - s0):
            training += median * (s1 - s0)
            stopped += seconds - median * (s1 - s0)
        else:
            training += seconds
    return training / 60, stopped / 60


def training_times(runs_dir: str, rows=ROWS) -> str:
    """Wall time of each run, from the first to the last scalar of its TensorBoard log
    less the time it was stopped (`training_minutes`), and the precision it trained in
    (`--mixed_precision=auto` picks by CPU)."""
    lines = ["| run | steps | precision | wall time (min) | stopped, not counted (min) |",
             "| --- | --- | --- | --- | --- |"]
    runs = [(f"{row}_s{seed}", folder) for row, _ in rows
            for seed, folder in seed_dirs(runs_dir, row).items()]
    runs += [(f"{row}_s{seed}{suffix}", folder) for suffix, _, check_rows in CHECKS
             for row in check_rows if row in dict(rows)
             for seed, folder in seed_dirs(runs_dir, row, suffix).items()]
    for name, folder in runs:
        times = read_wall_times(folder)
        if times:
            minutes, stopped = training_minutes(times)
            precision = _settings(folder).get("mixed_precision", "?")
            lines.append(f"| {name} | {max(s for s, _ in times)} | {precision} | {minutes:.1f} | "
                         f"{f'{stopped:.1f}' if stopped >= 0.05 else '-'} |")
    return "\n".join(lines) + "\n"


def rank1_curve(folder: str) -> list[tuple[int, float]]:
    """[(step, rank-1 %)] of a run's in-training evaluation (eval_history.json; [] if none)."""
    path = os.path.join(folder, "eval_history.json")
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [(int(p["step"]), 100 * p["rank1"]) for p in json.load(f)["points"]]


def rank1_curves_markdown(runs_dir: str, rows=ROWS, steps=None) -> str:
    """Each run's in-training dev rank-1 (%, eval_history.json: single query, Euclidean)
    at `steps` (default: every step any run evaluated at; blank where a run did not),
    a line per run and seed: whether a row's curve had flattened when it stopped."""
    curves = {}
    for row, _ in rows:
        for seed, folder in seed_dirs(runs_dir, row).items():
            curve = rank1_curve(folder)
            if curve:
                curves[f"{row}_s{seed}"] = dict(curve)
    if not curves:
        return ""
    columns = sorted(steps or {s for curve in curves.values() for s in curve})
    lines = ["| run | " + " | ".join(str(s) for s in columns) + " |",
             "| --- |" + " --- |" * len(columns)]
    for name, curve in curves.items():
        cells = [f"{curve[s]:.1f}" if s in curve else "" for s in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def run_scalars(folder: str) -> dict[str, list[list[float]]]:
    """tag -> [[step, value, wall time]] of a run: its record's scalars.json, or the
    TensorBoard events of a run folder (tools/run_record.py reads them the same way)."""
    path = os.path.join(folder, run_record.SCALARS)
    if os.path.isfile(path):
        with open(path) as f:
            return json.load(f)
    log_dir = os.path.join(folder, "logs")
    return run_record.event_scalars(log_dir) if os.path.isdir(log_dir) else {}


def read_scalars(folder: str) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] sorted by step."""
    return {tag: [(int(p[0]), p[1]) for p in points]
            for tag, points in run_scalars(folder).items()}


def read_wall_times(folder: str) -> list[tuple[int, float]]:
    """[(step, wall time)] of the total loss (resumed runs: every segment)."""
    scalars = run_scalars(folder)
    points = scalars.get("loss/total", scalars.get("loss", []))
    return [(int(p[0]), p[2]) for p in points]


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
        scalars = read_scalars(seed_dirs(runs_dir, row).get(0, "-"))
        if not scalars:
            print(f"no logs for {row} seed 0: skipped in the loss plots")
            continue
        total = scalars.get("loss/total", scalars.get("loss"))
        if total:
            totals[row] = total
        terms = {tag: pts for tag, pts in scalars.items()
                 if (tag.endswith("loss") or tag.startswith("loss/"))
                 and tag not in ("loss", "loss/total")}
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


def _stage1_steps(folder: str) -> int:
    """Steps of the stage-1 run a stage-2 run started from (0 for a stage-1 run), so
    that a stage-2 curve continues its stage-1 curve."""
    settings = _settings(folder)
    init = settings.get("init_from")
    if settings.get("stage") != "2" or not init:
        return 0
    # A record sits beside the record of the run it started from.
    for candidate in (init, os.path.join(os.path.dirname(folder), os.path.basename(
            init.rstrip("/")))):
        if os.path.isfile(os.path.join(candidate, "config.json")):
            return int(_settings(candidate)["total_steps"])
    return 0


def rank1_figure(runs_dir: str, fig_dir: str, rows=ROWS) -> tuple[str | None, dict]:
    """Euclidean rank-1 of every row (seed 0) over iterations, from eval_history.json."""
    curves = {}
    for row, _ in rows:
        folder = seed_dirs(runs_dir, row).get(0, "-")
        curve = rank1_curve(folder)
        if curve:
            curves[row] = [(step + _stage1_steps(folder), rank1) for step, rank1 in curve]
    if not curves:
        print("no eval_history.json: rank-1 curve skipped")
        return None, {}
    path = os.path.join(fig_dir, "rank1_curve.png")
    reports.write_png(path, line_plot(curves, "ITERATION", "EUCLIDEAN RANK-1 % (SEED 0)"))
    return path, curves


def attention_figure(runs_dir: str, fig_dir: str, row: str, data_dir: str,
                     num_images: int = 6) -> str | None:
    """Query images, their masks and Phi+ (40x16, nearest-upscaled to 160x64) side by side.
    Needs the run folder's weights (runs_dir: the run folders, not the records)."""
    folder = seed_dirs(runs_dir, row).get(0, "-")
    if not (data_dir and os.path.isdir(os.path.join(folder, "checkpoints"))):
        print(f"no checkpoint of {row} seed 0 in {runs_dir} or no --data_dir: attention "
              "maps skipped (the figure there is kept)")
        return None
    import tensorflow as tf

    from mgcam_tf.training import run_dir
    from mgcam_tf.data import layouts, preprocess

    model = run_dir.load_trained_model(folder)
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
    parser.add_argument("--runs_dir", default="docs/results/cuhk03_pair1",
                        help="the runs' records (tools/run_record.py) or run folders")
    parser.add_argument("--weights_dir", default="", help="the run folders, with their "
                        "checkpoints, for the attention maps (default: --runs_dir)")
    parser.add_argument("--out_dir", default="docs")
    parser.add_argument("--data_dir", default="", help="data set (for the attention maps)")
    parser.add_argument("--attention_row", default="mgcam_rgbm")
    parser.add_argument("--figures", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--results_md", default="", help="also replace the text between "
                        "the '<!-- results_table.md begin/end -->' markers of this file")
    parser.add_argument("--rows", default="", help="comma-separated rows (folders "
                        "<row>_s<seed>) to tabulate instead of the six of the table, each "
                        "compared with the row before it (an ablation's steps)")
    parser.add_argument("--pairs", default="", help="comma-separated a:b comparisons "
                        "(b - a) of --rows, instead of each row against the row before")
    parser.add_argument("--metrics", default="", help="comma-separated evaluations to "
                        "tabulate (eval_<metric>_<protocol>.json; default the five metrics)")
    parser.add_argument("--curves", default="", help="also each run's in-training rank-1 "
                        "curve: 'all' (every step evaluated) or comma-separated steps")
    args = parser.parse_args(argv)
    curve_steps = None
    if args.curves and args.curves != "all":
        try:
            curve_steps = [int(step) for step in args.curves.split(",") if step]
        except ValueError:
            parser.error(f"--curves: {args.curves!r} is not 'all' or comma-separated steps")

    rows, comparisons, metrics = ROWS, COMPARISONS, METRICS
    if args.rows:
        rows = [(name, name) for name in args.rows.split(",") if name]
        comparisons = [(f"{b} vs {a}", a, b) for (a, _), (b, _) in zip(rows, rows[1:])]
    if args.pairs:
        pairs = [pair.split(":") for pair in args.pairs.split(",") if pair]
        named = {row for row, _ in rows}
        for pair in pairs:
            if len(pair) != 2 or not set(pair) <= named:
                parser.error(f"--pairs: {':'.join(pair)!r} is not a:b of two rows of --rows")
        comparisons = [(f"{b} vs {a}", a, b) for a, b in pairs]
    if args.metrics:
        metrics = [(name, name) for name in args.metrics.split(",") if name]
    results = read_results(args.runs_dir, rows, metrics)
    check = checks_markdown(args.runs_dir, results) if not args.rows else ""
    text = (table_markdown(results, rows, metrics)
            + "\n" + intervals_markdown(results, comparisons=comparisons)
            + (f"\nSeed 0 trained again (b: the table's run, a: the check run):\n\n{check}"
               if check else "")
            + "\n" + training_times(args.runs_dir, rows))
    if args.curves:
        curves = rank1_curves_markdown(args.runs_dir, rows, curve_steps)
        text += ("\nIn-training rank-1 (%, dev split, single query, Euclidean):\n\n"
                 + (curves or "no eval_history.json in these runs\n"))
    print(text, end="")
    os.makedirs(args.out_dir, exist_ok=True)
    atomic_files.write_text(os.path.join(args.out_dir, "results_table.md"), text)
    if args.results_md:
        page = open(args.results_md, encoding="utf-8").read()
        begin, end = "<!-- results_table.md begin -->", "<!-- results_table.md end -->"
        if begin not in page or end not in page:
            print(f"{args.results_md}: no {begin} ... {end} markers; left as it is")
        else:
            head, rest = page.split(begin, 1)
            page = head + begin + "\n" + text + "\n" + end + rest.split(end, 1)[1]
            atomic_files.write_text(args.results_md, page)
    if args.figures:
        fig_dir = os.path.join(args.out_dir, "figures")
        os.makedirs(fig_dir, exist_ok=True)
        for path in loss_figures(args.runs_dir, fig_dir, rows):
            print(f"wrote {path}")
        path, curves = rank1_figure(args.runs_dir, fig_dir, rows)
        if path:
            print(f"wrote {path}")
            for row, points in curves.items():
                print(f"{row} rank-1 %: " + " ".join(f"{s}:{v:.1f}" for s, v in points))
        path = attention_figure(args.weights_dir or args.runs_dir, fig_dir,
                                args.attention_row, args.data_dir)
        if path:
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
