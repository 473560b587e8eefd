"""Printing an evaluation for the command lines (the library only returns values)."""

from __future__ import annotations

import sys

from mgcam_tf.data.layouts import ReidDataset


def progress_printer(label: str, enabled: bool = True):
    """A progress callback(done, total) that redraws one stderr line on a
    terminal, and prints only the finished count into a log file."""
    redraw = sys.stderr.isatty()

    def show(done: int, total: int | None) -> None:
        finished = total is not None and done >= total
        if enabled and (redraw or finished):
            print(f"\r{label}: {done}/{total if total is not None else '?'} images",
                  end="\n" if finished else "", file=sys.stderr, flush=True)
    return show


def print_evaluation(model, dataset: ReidDataset, batch_size: int = 256,
                     progress: bool = True, metric: str = "euclidean",
                     ap: str = "official") -> dict:
    """Extracts h_full for query and gallery, prints the CMC/mAP table, returns the summary."""
    from mgcam_tf.evaluation import distances, features, metrics, reports

    query = features.split_features(model, dataset.query, batch_size=batch_size,
                                    progress=progress_printer("query features", progress))
    gallery = features.split_features(model, dataset.gallery, batch_size=batch_size,
                                      progress=progress_printer("gallery features", progress))
    distmat = distances.compute_distances(query.features, gallery.features, metric)
    result = metrics.evaluate(distmat, query.pids, query.camids, gallery.pids,
                              gallery.camids, ap=ap)
    summary = result.summary()
    print(reports.format_table(summary, {"data": dataset.name, "metric": metric, "ap": ap},
                               result.num_valid, result.num_invalid))
    return summary
