"""Printing an evaluation for the command lines (the library only returns values)."""

from __future__ import annotations

from mgcam_tf.cli.common import ProgressBar
from mgcam_tf.data.layouts import ReidDataset


def print_evaluation(model, dataset: ReidDataset, batch_size: int = 256,
                     progress: bool = True, metric: str = "euclidean",
                     ap: str = "official") -> dict:
    """Extracts h_full for query and gallery, prints the CMC/mAP table, returns the summary."""
    from mgcam_tf.evaluation import evaluator, features, reports

    query = features.split_features(model, dataset.query, batch_size=batch_size,
                                    progress=ProgressBar("query features", enabled=progress))
    gallery = features.split_features(model, dataset.gallery, batch_size=batch_size,
                                      progress=ProgressBar("gallery features", enabled=progress))
    result = evaluator.ReidEvaluator(metric, ap).evaluate(query, gallery).result
    summary = result.summary()
    print(reports.format_table(summary, {"data": dataset.name, "metric": metric, "ap": ap},
                               result.num_valid, result.num_invalid))
    return summary
