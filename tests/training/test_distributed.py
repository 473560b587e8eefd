"""One train_step under MirroredStrategy on 2 logical CPU devices equals one device.

Tolerance: 1e-9 on every weight, in float64 (the script explains why float64).
Without synchronized BatchNorm the same comparison is off by about 1e-2,
which shows that the check can fail.
"""

import json
import os
import subprocess
import sys
from harness import REPO



def test_mirrored_step_with_synchronized_bn_matches_one_device():
    proc = subprocess.run(
        [sys.executable, str(REPO / "tests" / "scripts" / "mirrored_step.py")],
        env={**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"},
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["update"] > 1e-3          # the step did move the weights
    assert report["centres_moved"] > 1e-3   # and the centre loss's centres (compared in "sync")
    assert report["sync"] < 1e-9
    assert report["unsync"] > 1e-4          # per-replica BN statistics differ
