"""Runs many command lines of one mgcam tool, each in a forked child, TensorFlow imported once.

  python tests/scripts/cli_cases.py TOOL CASES.json RESULTS.json

CASES.json: [{"id": ..., "argv": [...]}, ...]. Each case runs as
`mgcam-TOOL ARGV...` would (the tool's `run()`: absl flag parsing, one-line
errors) in a child forked after the imports, so that a case costs its own
work, not TensorFlow's import. RESULTS.json: {id: {"rc", "stdout", "stderr"}}.
The first case of a list should be run for real (a plain subprocess) by the
caller when the start-up output matters: here TensorFlow's start-up lines
are printed once, by this parent, before any child runs.
"""

import importlib
import json
import os
import pathlib
import sys
import tempfile
import time
import traceback

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

MODULES = {"train": "train", "eval": "evaluate", "masks": "make_masks", "export": "export",
           "extract": "extract", "search": "search", "verify": "verify"}


def main() -> None:
    tool, cases_path, results_path = sys.argv[1:4]
    module = importlib.import_module(f"mgcam_tf.cli.{MODULES[tool]}")
    import tensorflow  # noqa: F401  (through the tool's quiet import)
    for name in ("mgcam_tf.data.pipeline", "mgcam_tf.data.layouts", "mgcam_tf.serving.loader",
                 "mgcam_tf.serving.export", "mgcam_tf.retrieval.extraction",
                 "mgcam_tf.retrieval.search", "mgcam_tf.training.run_dir",
                 "mgcam_tf.training.trainer", "mgcam_tf.evaluation.evaluator",
                 "mgcam_tf.evaluation.reports", "mgcam_tf.segmentation.writer"):
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    cases = json.loads(pathlib.Path(cases_path).read_text())
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for case in cases:
            out, err = os.path.join(tmp, "out"), os.path.join(tmp, "err")
            sys.stdout.flush()
            sys.stderr.flush()
            started = time.monotonic()
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    fd_out = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
                    fd_err = os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
                    os.dup2(fd_out, 1)
                    os.dup2(fd_err, 2)
                    if case.get("cwd"):
                        os.chdir(case["cwd"])
                    sys.argv = [f"mgcam-{tool}"] + list(case["argv"])
                    try:
                        module.run()
                        code = 0
                    except SystemExit as exit_:
                        code = exit_.code if isinstance(exit_.code, int) else \
                            (0 if exit_.code is None else 1)
                    except BaseException:  # what Python itself would print
                        traceback.print_exc()
                        code = 1
                finally:
                    try:
                        sys.stdout.flush()
                        sys.stderr.flush()
                    finally:
                        os._exit(code)
            _, status = os.waitpid(pid, 0)
            rc = os.waitstatus_to_exitcode(status)
            results[case["id"]] = {"rc": rc, "stdout": pathlib.Path(out).read_text(errors="replace"),
                                   "stderr": pathlib.Path(err).read_text(errors="replace"),
                                   "seconds": round(time.monotonic() - started, 2)}
    pathlib.Path(results_path).write_text(json.dumps(results))


if __name__ == "__main__":
    main()
