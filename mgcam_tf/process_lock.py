"""Lock files that name their process, and the one rule for when such a lock is stale.

The trainer's lock (`training/run_dir.py`), the input cache's owner file
(`data/pipeline.py`), the synthetic data's and the export's temporary
folders (`data/synthetic.py`, `serving/export.py`) all record the pid of
the process that made them, so that a later run can tell a live writer
from one killed with -9. The rules, in one place:

- a pid is alive when `os.kill(pid, 0)` finds it (another user's process,
  EPERM, counts as alive); anything that is not a positive integer a
  kernel can hold (garbage, negative, 99999999999999999999, 2147483648)
  names no process;
- a lock whose owner can be read, on this host, is stale when its pid is
  not alive; one on another host is never judged; one whose pid is an
  integer no process can have is stale;
- a lock whose owner cannot be read (empty: its writer was killed between
  creating the file and writing its pid; garbage; JSON that is not an
  object) is stale once it is older than `UNREADABLE_GRACE_SECONDS`: a
  live writer fills it within microseconds.

A stale lock is taken over with a warning on the `mgcam_tf` logger.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pathlib
import socket
import time
from typing import Iterator, Optional

from mgcam_tf.errors import ConfigError, OutputError

UNREADABLE_GRACE_SECONDS = 5.0
# Linux's pid_max is at most 2**22; 2**31 - 1 bounds every pid_t.
_MAX_PID = 2 ** 31 - 1


def valid_pid(value) -> Optional[int]:
    """`value` as a pid (a positive integer a pid_t can hold), else None."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= _MAX_PID:
        return None
    return value


def pid_alive(pid) -> bool:
    """Whether process `pid` of this host runs (False for anything that is not a pid)."""
    pid = valid_pid(pid)
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:   # someone else's live process
        return True
    return True


def read_owner(path: os.PathLike) -> dict:
    """The JSON object a lock file holds ({} when missing, empty, garbage or not an object)."""
    try:
        owner = json.loads(pathlib.Path(path).read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    return owner if isinstance(owner, dict) else {}


def stale_reason(path: os.PathLike, owner: Optional[dict] = None) -> Optional[str]:
    """Why the lock at `path` is stale (module doc), or None when it may be held.

    `owner`: its content when already read (`read_owner`).
    """
    owner = read_owner(path) if owner is None else owner
    recorded = owner.get("pid")
    if isinstance(recorded, int) and not isinstance(recorded, bool) and valid_pid(recorded) is None:
        return f"its pid {recorded} cannot be a process"
    pid = valid_pid(recorded)
    if pid is not None:
        if owner.get("host", socket.gethostname()) != socket.gethostname():
            return None
        return None if pid_alive(pid) else f"pid {pid} is no longer running"
    try:
        age = time.time() - os.stat(path).st_mtime
    except OSError:
        return "it is gone"
    if age > UNREADABLE_GRACE_SECONDS:
        return f"its owner cannot be read and it is {age:.0f} s old"
    return None


def describe(owner: dict) -> str:
    pid = valid_pid(owner.get("pid"))
    if pid is None:
        return "owner not recorded yet"
    return f"pid {pid} on {owner.get('host', '?')}"


@contextlib.contextmanager
def held(path: os.PathLike, what: str, holder: str, advice: str) -> Iterator[None]:
    """Holds lock file `path` (this host and pid) for the body of a `with`.

    Args:
      what: the thing locked, as the user named it ("--model_dir runs/a").
      holder: what holds such a lock ("trainer").
      advice: what to do when it is held ("choose another --model_dir").

    Raises:
      ConfigError: a live (or not yet judged) holder has it.
      OutputError: the lock file cannot be created.
    """
    path = pathlib.Path(path)
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = read_owner(path)
            reason = stale_reason(path, owner)
            if reason is None:
                raise ConfigError(
                    f"{what} is in use by another {holder} ({describe(owner)}, lock {path}); "
                    f"wait for it to finish or {advice}") from None
            logging.getLogger("mgcam_tf").warning(
                "%s: taking over the lock %s of a %s that is gone (%s)", what, path, holder,
                reason)
            path.unlink(missing_ok=True)
            continue
        except OSError as err:
            raise OutputError(f"{path}: cannot create the lock ({err.strerror})") from None
        with os.fdopen(fd, "w") as f:
            json.dump({"pid": os.getpid(), "host": socket.gethostname()}, f)
        break
    else:
        raise ConfigError(f"{what}: cannot take the lock {path} (another {holder} keeps "
                          f"taking it); {advice}")
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


__all__ = ["valid_pid", "pid_alive", "read_owner", "stale_reason", "describe", "held",
           "UNREADABLE_GRACE_SECONDS"]
