"""mgcam_tf.training under MultiWorkerMirroredStrategy: 2 worker processes on 127.0.0.1.

The workers train 4 steps (two checkpoints) and stop; started again they
resume from the chief's checkpoint and train 2 more. Their final weights must be identical
(all-reduce gives every worker the same gradients; tolerance 1e-12) and equal
to one worker that trains the 6 steps with the same global batch (tolerance
1e-9, in float64 with synchronized BatchNorm, see the script). Only the
chief writes checkpoints and TensorBoard logs; the other worker's scratch
checkpoints are gone.
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
from harness import REPO

SCRIPT = REPO / "tests" / "scripts" / "multi_worker_train.py"
TIMEOUT_S = 300


def free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def launch(model_dir, steps, out, tf_config=None):
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env.update(PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2")
    if tf_config is not None:
        env["TF_CONFIG"] = json.dumps(tf_config)
    return subprocess.Popen([sys.executable, str(SCRIPT), str(model_dir), str(steps),
                             str(out)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(procs):
    """Waits for every process; kills them all if one fails or time runs out."""
    reports = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=TIMEOUT_S)
            assert proc.returncode == 0, err[-3000:]
            reports.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return reports


def weights(path):
    with np.load(path) as f:
        return [f[k] for k in sorted(f.files, key=lambda k: int(k.split("_")[1]))]


def max_diff(a, b):
    return max(float(np.max(np.abs(x - y))) for x, y in zip(a, b))


def test_two_workers_match_each_other_and_one_worker_and_resume(tmp_path):
    workers = [f"127.0.0.1:{p}" for p in free_ports(2)]
    config = lambda i: {"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}}
    run_dir = tmp_path / "multi"
    single = launch(tmp_path / "single", 6, tmp_path / "single.npz")
    first = finish([launch(run_dir, 4, tmp_path / f"w{i}.npz", config(i)) for i in range(2)])
    assert [r["replicas"] for r in first] == [2, 2]
    assert [r["chief"] for r in first] == [True, False]
    assert [r["step"] for r in first] == [4, 4]
    # Started again (as after a worker was killed): both resume from the
    # chief's checkpoint at step 4.
    workers = [f"127.0.0.1:{p}" for p in free_ports(2)]
    second = finish([launch(run_dir, 6, tmp_path / f"w{i}.npz", config(i)) for i in range(2)])
    assert [r["step"] for r in second] == [6, 6]
    (alone,) = finish([single])
    assert alone["replicas"] == 1 and alone["step"] == 6

    w0, w1, one = (weights(tmp_path / f"{n}.npz") for n in ("w0", "w1", "single"))
    assert max_diff(w0, w1) < 1e-12
    assert max_diff(w0, one) < 1e-9
    ckpts = sorted(p.name for p in (run_dir / "checkpoints").glob("ckpt-*.index"))
    assert ckpts == ["ckpt-2.index", "ckpt-4.index", "ckpt-6.index"]
    assert list((run_dir / "logs").glob("events.out.tfevents.*"))
    assert not list(run_dir.glob(".worker*"))


def test_a_killed_worker_stops_the_others_and_the_rerun_resumes(tmp_path):
    """kill -9 of the non-chief worker mid-run: the chief stops with an error
    (TF's coordination service or the collective health check notices the lost
    peer) instead of hanging, and the two restarted workers resume from the
    chief's last checkpoint and finish."""
    import signal
    import time

    import tensorflow as tf

    total = 12
    workers = [f"127.0.0.1:{p}" for p in free_ports(2)]
    config = lambda i: {"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}}
    run_dir = tmp_path / "multi"
    procs = [launch(run_dir, total, tmp_path / f"w{i}.npz", config(i)) for i in range(2)]
    try:
        deadline = time.time() + TIMEOUT_S
        while time.time() < deadline and not list((run_dir / "checkpoints").glob("ckpt-*.index")):
            assert procs[0].poll() is None, procs[0].communicate()[1][-3000:]
            time.sleep(0.1)
        procs[1].send_signal(signal.SIGKILL)
        procs[1].wait()
        _, err = procs[0].communicate(timeout=TIMEOUT_S)   # not a hang
        assert procs[0].returncode != 0, "the chief trained on without its peer"
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    state = tf.train.get_checkpoint_state(str(run_dir / "checkpoints"))
    last = int(state.model_checkpoint_path.rsplit("-", 1)[1])
    assert 2 <= last < total
    workers = [f"127.0.0.1:{p}" for p in free_ports(2)]
    reports = finish([launch(run_dir, total, tmp_path / f"w{i}.npz", config(i)) for i in range(2)])
    assert [r["step"] for r in reports] == [total, total]
    assert max_diff(*(weights(tmp_path / f"w{i}.npz") for i in range(2))) < 1e-12
