"""What every mgcam command line shares: turning library errors into one line."""

from __future__ import annotations

import functools
import os
import sys
import time
from typing import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def fail(message: str) -> None:
    """Prints `error: message` on one line to stderr and exits with status 1."""
    first_line = " ".join(str(message).strip().split("\n")[0].split())
    print(f"error: {first_line}", file=sys.stderr)
    sys.exit(1)


def one_line_errors(main: Callable) -> Callable:
    """Wraps an absl main so that a user's mistake ends in one line, not a stack trace.

    MgcamError carries a message written for the user. A TensorFlow OpError
    that escapes the library (a file that vanished mid-run, say) is cut to
    its first line for the same reason. TensorFlow is not imported here, so
    a command that does not need it (mgcam-eval on an .npz) starts fast.
    """

    @functools.wraps(main)
    def wrapped(argv):
        from mgcam_tf.errors import MgcamError

        try:
            return main(argv)
        except MgcamError as err:
            fail(str(err))
        except KeyboardInterrupt:
            fail("interrupted")
        except Exception as err:
            tf = sys.modules.get("tensorflow")
            if tf is not None and isinstance(err, tf.errors.OpError):
                # A bad file found by the input pipeline mid-run reaches here
                # from inside the tf.data runtime; the pipeline knows its name.
                pipeline = sys.modules.get("mgcam_tf.data.pipeline")
                data_error = pipeline.data_error_from(err) if pipeline else None
                fail(str(data_error) if data_error else f"{type(err).__name__}: {err.message}")
            raise

    return wrapped


class ProgressBar:
    """A progress bar on stderr for the commands' long loops.

    Redrawn in place on a terminal (at most 5 times a second); in a log file,
    one line per 10 % so that logs stay short. Call it with the absolute count
    (`bar(done, total)`, the library's progress-callback signature) or
    advance it by a count (`bar.advance(n)`).
    """

    def __init__(self, label: str, total: int | None = None, enabled: bool = True,
                 width: int = 30):
        self.label, self.total, self.enabled, self.width = label, total, enabled, width
        self.done = 0
        self.tty = sys.stderr.isatty()
        self.start = time.monotonic()
        self._last_draw = 0.0
        self._last_decile = -1
        self._base: int | None = None

    def advance(self, n: int) -> None:
        self(self.done + n, self.total)

    def __call__(self, done: int, total: int | None = None) -> None:
        self.done = done
        if total is not None:
            self.total = total
        if self._base is None:
            # Work found already done (resumed runs) does not count in the rate.
            self._base, self.start = done, time.monotonic()
        if not self.enabled:
            return
        now = time.monotonic()
        finished = self.total is not None and done >= self.total
        if self.tty:
            if finished or now - self._last_draw >= 0.2:
                self._draw(now, "\n" if finished else "")
            return
        decile = done * 10 // max(self.total, 1) if self.total else done // 1000
        if decile != self._last_decile or finished:
            self._last_decile = decile
            self._draw(now, "\n")

    def _draw(self, now: float, end: str) -> None:
        self._last_draw = now
        elapsed = max(now - self.start, 1e-9)
        rate = (self.done - (self._base or 0)) / elapsed
        if self.total:
            filled = int(round(self.width * min(self.done / self.total, 1.0)))
            left = (self.total - self.done) / rate if rate > 0 else 0.0
            text = (f"{self.label} [{'#' * filled}{'.' * (self.width - filled)}] "
                    f"{self.done}/{self.total} {rate:.1f}/s ETA "
                    f"{int(left) // 60}:{int(left) % 60:02d}")
        else:
            text = f"{self.label}: {self.done} {rate:.1f}/s"
        print(("\r" if self.tty else "") + text, end=end, file=sys.stderr, flush=True)

    def close(self) -> None:
        """Ends a bar left unfinished (an error or Ctrl-C) on its own line."""
        if self.enabled and self.tty and (self.total is None or self.done < self.total):
            print(file=sys.stderr, flush=True)
