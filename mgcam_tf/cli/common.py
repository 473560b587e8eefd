"""What every mgcam command line shares: turning library errors into one line."""

from __future__ import annotations

import functools
import os
import sys
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
                fail(f"{type(err).__name__}: {err.message}")
            raise

    return wrapped
