"""The one way this package writes a file: a temporary name in the same folder, then a rename.

A reader (or a rerun after kill -9) sees the old file or the new one, never
half of one; what was there before survives a failed write (full disk,
read-only folder), and the failure is one `OutputError` naming the file.
The temporary name is hidden (`.NAME.<random>.tmp`) and removed on failure.
Files get the permissions of an ordinary `open()` (0666 less the umask),
like TensorFlow's checkpoints, not mkstemp's 0600.
"""

from __future__ import annotations

import json
import os
import tempfile

from mgcam_tf.errors import OutputError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes(path: str | os.PathLike, data: bytes, *, make_parents: bool = False) -> None:
    """Writes `data` to `path` atomically (module doc). Raises OutputError."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    try:
        if make_parents:
            os.makedirs(folder, exist_ok=True)
        elif not os.path.isdir(folder):
            raise OutputError(f"{path}: folder {folder} does not exist")
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp",
                                   dir=folder)
    except OSError as err:
        if isinstance(err, OutputError):
            raise
        raise OutputError(f"{path}: cannot write ({err.strerror or err})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as err:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(err, OSError):
            raise OutputError(f"{path}: cannot write ({err.strerror or err})") from None
        raise


def write_text(path: str | os.PathLike, text: str, **kwargs) -> None:
    write_bytes(path, text.encode("utf-8"), **kwargs)


def write_json(path: str | os.PathLike, payload, **kwargs) -> None:
    """Indented, key-sorted JSON with a final newline, written atomically."""
    write_text(path, json.dumps(payload, indent=2, sort_keys=True) + "\n", **kwargs)
