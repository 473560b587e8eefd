"""The one lock helper (mgcam_tf/process_lock.py): pids and lock files of any content.

A lock naming a pid that cannot exist (negative, 99999999999999999999,
2147483648), garbage, JSON that is not an object, or nothing at all (a
trainer killed between creating the file and writing its pid) must neither
crash a run with a traceback nor block it for ever.
"""

import json
import logging
import os
import socket
import subprocess
import sys
import time

import pytest

from mgcam_tf import process_lock
from mgcam_tf.errors import ConfigError
from mgcam_tf.training import run_dir


@pytest.mark.parametrize("value", [None, "12", 1.5, True, 0, -1, -12345, 2 ** 31,
                                   99999999999999999999, [1, 2], {"pid": 3}])
def test_anything_but_a_pid_names_no_live_process(value):
    assert process_lock.valid_pid(value) is None
    assert process_lock.pid_alive(value) is False


def test_live_and_dead_pids():
    assert process_lock.pid_alive(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert not process_lock.pid_alive(child.pid)


def _lock(folder, content, age_seconds=0.0):
    path = folder / run_dir.LOCK_FILE
    path.write_text(content)
    if age_seconds:
        then = time.time() - age_seconds
        os.utime(path, (then, then))
    return path


HOST = socket.gethostname()
UNREADABLE = ["", "not json", "12345", "[1, 2]", '"pid"', "null",
              json.dumps({"pid": "abc", "host": HOST}), json.dumps({"host": HOST})]
IMPOSSIBLE_PIDS = ["99999999999999999999", "2147483648", "-5", "0"]


@pytest.mark.parametrize("content", UNREADABLE + [
    json.dumps({"pid": p, "host": HOST}) for p in IMPOSSIBLE_PIDS])
def test_an_old_unreadable_or_impossible_lock_is_taken_over(tmp_path, caplog, content):
    content = content.replace('"pid": "99999999999999999999"', '"pid": 99999999999999999999')
    for pid in IMPOSSIBLE_PIDS:
        content = content.replace(f'"pid": "{pid}"', f'"pid": {pid}')
    path = _lock(tmp_path, content, age_seconds=600)
    with caplog.at_level(logging.WARNING, logger="mgcam_tf"):
        with run_dir.trainer_lock(tmp_path):
            assert json.loads(path.read_text())["pid"] == os.getpid()
    assert "taking over the lock" in caplog.text
    assert not path.exists()


@pytest.mark.parametrize("content", ["", "12345", "[1, 2]"])
def test_a_fresh_unreadable_lock_is_respected_in_one_line(tmp_path, content):
    # A trainer between creating the file and writing its pid.
    _lock(tmp_path, content)
    with pytest.raises(ConfigError, match="in use by another trainer .owner not recorded yet"):
        with run_dir.trainer_lock(tmp_path):
            pass


def test_a_huge_pid_in_a_fresh_lock_does_not_crash(tmp_path, caplog):
    # 99999999999999999999 made os.kill raise OverflowError in the trainer.
    _lock(tmp_path, '{"pid": 99999999999999999999, "host": "%s"}' % HOST)
    with caplog.at_level(logging.WARNING, logger="mgcam_tf"):
        with run_dir.trainer_lock(tmp_path):
            pass
    assert "its pid 99999999999999999999 cannot be a process" in caplog.text


def test_a_live_owner_and_another_host_are_respected(tmp_path):
    _lock(tmp_path, json.dumps({"pid": os.getppid(), "host": HOST}), age_seconds=600)
    with pytest.raises(ConfigError, match=f"pid {os.getppid()} on {HOST}"):
        with run_dir.trainer_lock(tmp_path):
            pass
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    _lock(tmp_path, json.dumps({"pid": child.pid, "host": "another-host"}), age_seconds=600)
    with pytest.raises(ConfigError, match="on another-host"):
        with run_dir.trainer_lock(tmp_path):
            pass


def test_a_dead_owner_is_taken_over(tmp_path, caplog):
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    _lock(tmp_path, json.dumps({"pid": child.pid, "host": HOST}))
    with caplog.at_level(logging.WARNING, logger="mgcam_tf"):
        with run_dir.trainer_lock(tmp_path):
            pass
    assert f"pid {child.pid} is no longer running" in caplog.text
