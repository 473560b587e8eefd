"""Parses every flagfile given on the command line with mgcam-train's flags.

Runs as a script: absl flags are process-global, and other CLIs define flags
of the same names. Prints one line per file: its name and "ok" or the error.
"""

import sys

from absl import flags

from mgcam_tf.cli import train

for path in sys.argv[1:]:
    flags.FLAGS.unparse_flags()
    try:
        flags.FLAGS(["mgcam-train", f"--flagfile={path}"])
        train.experiment_from_flags()
        flags.FLAGS.validate_all_flags()
        print(path, "ok" if flags.FLAGS.model_dir else "no --model_dir")
    except Exception as err:  # reported, the test fails on it
        print(path, f"{type(err).__name__}: {err}")
