"""Keeps what docs/RESULTS.md needs of a finished run, small enough to commit.

  python tools/run_record.py RUN_DIR RECORDS_DIR     # writes RECORDS_DIR/<run name>/

A run folder (checkpoints, TensorBoard events with images) is tens of MB and
lives outside the repository, so a machine that is replaced loses it; its
record is a few hundred KB and is what tools/results_table.py reads:
  config.json         the run's model config and settings (precision included)
  eval_*.json         tools/reproduce.sh's evaluations, per-query scores kept
                      (AP rounded to 6 digits, which the bootstrap does not feel)
  eval_history.json   the evaluation callback's rank-1/mAP over iterations
  scalars.json        {tag: [[step, value, wall time], ...]} of every scalar of
                      the TensorBoard log (loss curves, training time)
The record is written under a temporary name and renamed, replacing an older
record of the same run whole.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from mgcam_tf import atomic_files  # noqa: E402

SCALARS = "scalars.json"


def event_scalars(log_dir: str) -> dict[str, list[list[float]]]:
    """tag -> [[step, value, wall time]] sorted by step, from every event file in log_dir
    (a resumed run has several; a later value of a step replaces an earlier one)."""
    import tensorflow as tf

    series: dict[str, dict[int, tuple[float, float]]] = {}
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
                    series.setdefault(value.tag, {})[int(event.step)] = (
                        number, float(event.wall_time))
        except tf.errors.DataLossError:  # a file still being written: keep what was read
            pass
    return {tag: [[step, v, t] for step, (v, t) in sorted(points.items())]
            for tag, points in series.items()}


def _rounded(payload: dict) -> dict:
    per_query = payload.get("per_query")
    if per_query and "ap" in per_query:
        per_query["ap"] = [None if a is None else round(a, 6) for a in per_query["ap"]]
    return payload


def write_record(run_dir: str, records_dir: str) -> str:
    """Writes records_dir/<basename of run_dir>/ and returns its path."""
    run_dir = os.path.abspath(run_dir)
    name = os.path.basename(run_dir.rstrip("/"))
    if not os.path.isfile(os.path.join(run_dir, "config.json")):
        raise SystemExit(f"error: {run_dir}: no config.json, not a run folder")
    os.makedirs(records_dir, exist_ok=True)
    target = os.path.join(records_dir, name)
    staging = tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=records_dir)
    try:
        # eval_*.json: the evaluations and eval_history.json.
        for path in [os.path.join(run_dir, "config.json"),
                     *sorted(glob.glob(os.path.join(run_dir, "eval_*.json")))]:
            if os.path.isfile(path):
                with open(path, encoding="utf-8") as f:
                    payload = json.load(f)
                atomic_files.write_text(os.path.join(staging, os.path.basename(path)),
                                        json.dumps(_rounded(payload), indent=1) + "\n")
        scalars = event_scalars(os.path.join(run_dir, "logs"))
        atomic_files.write_text(os.path.join(staging, SCALARS),
                                json.dumps(scalars, separators=(",", ":")) + "\n")
        os.chmod(staging, 0o755)
        old = None
        if os.path.exists(target):
            old = f"{target}.old-{os.getpid()}"
            os.rename(target, old)
        os.rename(staging, target)
        if old:
            shutil.rmtree(old)
    finally:
        if os.path.isdir(staging):
            shutil.rmtree(staging)
    return target


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__.splitlines()[2].strip(), file=sys.stderr)
        return 2
    print(f"wrote {write_record(argv[1], argv[2])}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
