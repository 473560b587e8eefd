"""`python tools/evaluate.py ...` from a checkout: the same as the mgcam-eval command."""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from mgcam_tf.cli.evaluate import run  # noqa: E402

if __name__ == "__main__":
    run()
