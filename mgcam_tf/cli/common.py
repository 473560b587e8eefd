"""What every mgcam command line shares: --help, quiet TensorFlow start-up, one-line errors,
the progress bar."""

from __future__ import annotations

import contextlib
import functools
import importlib.abc
import importlib.util
import os
import sys
import tempfile
import textwrap
import time
from typing import Callable, Iterator

from absl import app, flags

# Set before TensorFlow is imported (it reads it once, at load time); every
# command imports this module before TensorFlow. --verbose sets it back to 0.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

flags.DEFINE_bool("verbose", False, "Show TensorFlow's own start-up and INFO log lines "
                  "(oneDNN, CPU features, absl::InitializeLog), hidden by default.")

HELP_ARGS = ("--help", "-help", "-h", "--helpshort", "-helpshort", "-?")

# TensorFlow 2.21's C++ start-up lines that TF_CPP_MIN_LOG_LEVEL does not
# silence: absl's C++ logging prints them before it is initialised.
_STARTUP_NOISE = (
    "All log messages before absl::InitializeLog() is called",
    "oneDNN custom operations are on",
    "cpu_feature_guard.cc",
    "To enable the following instructions:",
    "rebuild TensorFlow with the appropriate compiler flags",
    "Unable to register cuDNN factory", "Unable to register cuFFT factory",
    "Unable to register cuBLAS factory", "computation placer already registered",
    # TFLite's, once per process, when the first interpreter makes its CPU delegate.
    "Created TensorFlow Lite XNNPACK delegate for CPU",
)


@contextlib.contextmanager
def _filtered_stderr() -> Iterator[None]:
    """Holds file descriptor 2 in a file for the block, then replays what is not start-up noise.

    The noise is written by C++ straight to fd 2, below Python's sys.stderr,
    so only swapping the descriptor can catch it.
    """
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no descriptor 2 (a daemon): nothing to filter
        yield
        return
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            for line in held.read().decode("utf-8", "replace").splitlines(keepends=True):
                if not any(noise in line for noise in _STARTUP_NOISE):
                    sys.stderr.write(line)
            sys.stderr.flush()


class _QuietTensorFlowImport(importlib.abc.MetaPathFinder):
    """Runs the first `import tensorflow` inside `_filtered_stderr`, wherever it happens.

    Commands import TensorFlow late (so --help and .npz evaluation stay fast),
    in many places; a finder catches all of them without each one knowing.
    """

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        uninstall_quiet_import()
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def quiet_exec_module(module):
            with _filtered_stderr():
                exec_module(module)

        spec.loader.exec_module = quiet_exec_module
        return spec


_QUIET_IMPORT = _QuietTensorFlowImport()


def uninstall_quiet_import() -> None:
    if _QUIET_IMPORT in sys.meta_path:
        sys.meta_path.remove(_QUIET_IMPORT)


if "tensorflow" not in sys.modules and os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2") != "0":
    sys.meta_path.insert(0, _QUIET_IMPORT)


def _is_required(flag) -> bool:
    # flags.mark_flag_as_required registers exactly this validator message.
    return any("must have a value other than None" in str(getattr(v, "message", ""))
               for v in getattr(flag, "validators", []))


def _describe_flag(flag) -> str:
    head = f"  --{flag.name}"
    if flag.short_name:
        head += f" (-{flag.short_name})"
    if _is_required(flag):
        head += "  [required]"
    text = flag.help or ""  # absl has put an enum's <a|b|c> in front already
    if flag.default is not None and not _is_required(flag):
        default = flag.default
        if isinstance(default, bool):
            default = str(default).lower()
        elif isinstance(default, str):
            default = repr(default)
        elif isinstance(default, (list, tuple)):
            default = repr(",".join(map(str, default)))
        text += f" (default: {default})"
    body = textwrap.fill(text, width=88, initial_indent="      ", subsequent_indent="      ")
    return f"{head}\n{body}"


def tool_help(module_name: str) -> str:
    """What the tool does (its module docstring, examples included) and its own flags.

    The flags are the ones the tool's module defines (absl's key flags of
    that module) plus the shared ones of this module; required ones are marked.
    """
    module = sys.modules[module_name]
    fv = flags.FLAGS
    own = sorted(fv.get_key_flags_for_module(module_name), key=lambda f: f.name)
    shared = sorted(fv.get_key_flags_for_module(__name__), key=lambda f: f.name)
    lines = [(module.__doc__ or module_name).strip(), "", "flags:"]
    lines += [_describe_flag(f) for f in own]
    lines += ["", "shared flags:"] + [_describe_flag(f) for f in shared]
    lines += ["", "  --flagfile=FILE   read flags from FILE (one --name=value a line)",
              "  --helpfull        every flag, absl's included"]
    return "\n".join(lines) + "\n"


def run_tool(main: Callable, module_name: str) -> None:
    """A console script's entry point: --help answers from the tool's own flags, then absl runs main.

    absl's own --help lists the flags of the script file (for a console script
    a generated stub that defines none) and exits 1; this prints the tool's
    doc and flags and exits 0 without importing TensorFlow.
    """
    args = sys.argv[1:]
    args = args[:args.index("--")] if "--" in args else args
    if any(arg in HELP_ARGS for arg in args):
        sys.stdout.write(tool_help(module_name))
        sys.exit(0)

    def with_verbosity(argv):
        if flags.FLAGS.verbose:
            uninstall_quiet_import()
            os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
        return one_line_errors(main)(argv)

    app.run(with_verbosity, flags_parser=_parse_flags_one_line)


def _parse_flags_one_line(argv):
    """absl's flag parsing, a bad or missing flag ending in one `error:` line
    (absl's own prints two, the second a pointer to --helpshort)."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as err:
        fail(str(err))


def quiet_tflite_start(model_path) -> None:
    """Makes one BlazePose interpreter with fd 2 filtered, so that TFLite's
    once-per-process "Created TensorFlow Lite XNNPACK delegate" INFO line
    (C++, below any Python logger) is spent here and not printed."""
    from mgcam_tf.segmentation import segmenter

    with _filtered_stderr():
        segmenter.BodySegmenter(model_path)


def check_numbers(*names: str, low: float | None = None, high: float | None = None,
                  low_open: bool = False, high_open: bool = False) -> None:
    """Refuses, when the flags are parsed (before any work), a value of the
    numeric flags `names` that is NaN, infinite, or outside [low, high]
    (`low_open` / `high_open`: the bound itself excluded). None (unset) passes."""
    import math

    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {low:g}")
    if high is not None:
        parts.append(f"{'<' if high_open else '<='} {high:g}")
    rule = "a finite number" + (" " + " and ".join(parts) if parts else "")

    def ok(value) -> bool:
        if value is None:
            return True
        if not math.isfinite(value):
            return False
        if low is not None and (value <= low if low_open else value < low):
            return False
        if high is not None and (value >= high if high_open else value > high):
            return False
        return True

    for name in names:
        # absl words it "flag --NAME=VALUE: must be ...".
        flags.register_validator(name, ok, message=f"must be {rule}")


def fail(message: str) -> None:
    """Prints `error: message` on one line to stderr and exits with status 1."""
    first_line = " ".join(str(message).strip().split("\n")[0].split())
    print(f"error: {first_line}", file=sys.stderr)
    sys.exit(1)


def op_error_summary(message: str) -> str:
    """The line of a TensorFlow error that says what went wrong.

    A graph-mode error starts with "Graph execution error:" and the Python
    frames of the node; the cause is the first line after them that is not a
    frame, a source line or a node annotation.
    """
    lines = [line.strip() for line in str(message).splitlines()]
    if not lines or not lines[0].startswith("Graph execution error"):
        return lines[0] if lines else ""
    for line in lines[1:]:
        if (not line or line.startswith(("Detected at node", "File ", "[[", "(", "Traceback"))
                or line.endswith(("(most recent call last):", ":"))):
            continue
        if line.startswith("Stack trace for op definition"):
            break
        return line
    return lines[0]


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
        except app.UsageError as err:
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
                if data_error is None and flags.FLAGS.verbose:
                    raise  # --verbose: the whole trace, for a bug report
                fail(str(data_error) if data_error else
                     f"{type(err).__name__}: {op_error_summary(err.message)}")
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
        self._updates = 0

    def advance(self, n: int) -> None:
        self(self.done + n, self.total)

    def __call__(self, done: int, total: int | None = None) -> None:
        self.done = done
        self._updates += 1
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
        elapsed = now - self.start
        counted = self.done - (self._base or 0)
        # A rate needs two updates and some work since the first: before that
        # it would read "0.0/s ETA 0:00".
        rate = counted / elapsed if self._updates >= 2 and counted > 0 and elapsed > 0 else None
        speed = f"{rate:.1f}/s" if rate is not None else "-/s"
        if self.total:
            filled = int(round(self.width * min(self.done / self.total, 1.0)))
            if self.done >= self.total:
                eta = f"in {_clock(elapsed)}"
            elif rate is None:
                eta = "ETA -:--"
            else:
                eta = f"ETA {_clock((self.total - self.done) / rate)}"
            text = (f"{self.label} [{'#' * filled}{'.' * (self.width - filled)}] "
                    f"{self.done}/{self.total} {speed} {eta}")
        else:
            text = f"{self.label}: {self.done} {speed}"
        print(("\r" if self.tty else "") + text, end=end, file=sys.stderr, flush=True)

    def close(self) -> None:
        """Ends a bar left unfinished (an error or Ctrl-C) on its own line."""
        if self.enabled and self.tty and (self.total is None or self.done < self.total):
            print(file=sys.stderr, flush=True)


def _clock(seconds: float) -> str:
    """H:MM:SS past an hour (a whole training run), M:SS below."""
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def define_preset_flag(instead_of: str) -> None:
    """--preset=NAME: a trained model shipped with the package, in place of `instead_of`."""
    flags.DEFINE_string("preset", "", "A trained model shipped with the package, used in "
                        f"place of {instead_of}: mgcam_siamese_cuhk03 (MGCAM-Siamese, RGB-M, "
                        "CUHK03 pair 1; research use only). See mgcam_tf/presets/.")


def require_one_of(*names: str) -> None:
    """Exactly one of the flags `names` must be given (e.g. --saved_model or --preset)."""
    flags.register_multi_flags_validator(
        list(names), lambda values: sum(bool(v) for v in values.values()) == 1,
        message="give exactly one of " + ", ".join(f"--{n}" for n in names))


def model_dir_or_preset() -> str:
    """--model_dir, or the model directory of --preset."""
    if flags.FLAGS.preset:
        from mgcam_tf import presets

        return str(presets.preset_dir(flags.FLAGS.preset))
    return flags.FLAGS.model_dir


def saved_model_or_preset() -> str:
    """--saved_model, or the TF Serving export of --preset (made once, then cached)."""
    if flags.FLAGS.preset:
        from mgcam_tf import presets

        with _quiet_python_info():
            return str(presets.export_preset(flags.FLAGS.preset))
    return flags.FLAGS.saved_model


@contextlib.contextmanager
def _quiet_python_info() -> Iterator[None]:
    """Hides, unless --verbose, the INFO lines TensorFlow's Python code logs through
    absl while it writes a SavedModel (signature renames, "Sharding callback
    duration", "Writing fingerprint to ..."): the first use of a preset exports
    it, and those lines would land among the command's results."""
    if flags.FLAGS.verbose:
        yield
        return
    from absl import logging as absl_logging

    before = absl_logging.get_verbosity()
    absl_logging.set_verbosity(min(before, absl_logging.WARNING))  # absl: lower is quieter
    try:
        yield
    finally:
        absl_logging.set_verbosity(before)
