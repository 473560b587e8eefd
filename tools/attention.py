"""`python tools/attention.py ...` from a checkout: the same as the mgcam-attention command."""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from mgcam_tf.cli.attention import run  # noqa: E402

if __name__ == "__main__":
    run()
