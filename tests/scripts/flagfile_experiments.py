"""Prints, for each flagfile given, `path <json of its experiment>`.

A script because absl flags are process-global (see parse_flagfiles.py).
"""

import json
import sys

from absl import flags

from mgcam_tf.cli import train

for path in sys.argv[1:]:
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["mgcam-train", f"--flagfile={path}"])
    print(path, json.dumps(train.experiment_from_flags().to_dict()))
