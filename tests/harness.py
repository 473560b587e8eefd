"""What the tests share: the repository's root, the shared data, and one way to run a command.

`conftest.py` makes fixtures of these; test modules import the names directly
(`from harness import REPO, run_tool`).
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
# ../shared/data beside the checkout, or $MGCAM_SHARED_DATA (read-only in CI).
SHARED_DATA = pathlib.Path(os.environ.get("MGCAM_SHARED_DATA", REPO.parent / "shared" / "data"))
# The environment of every child process: this checkout first on the path,
# TensorFlow's start-up lines quiet.
ENV = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}


def run_tool(tool: str, *args, env: dict | None = None, timeout: float = 600,
             cwd: os.PathLike | None = None) -> subprocess.CompletedProcess:
    """Runs `tools/<tool>.py` (the command `mgcam-<tool>` as a checkout runs it) in a
    child process: exit code, stdout and stderr captured as text."""
    return subprocess.run([sys.executable, str(REPO / "tools" / f"{tool}.py"), *map(str, args)],
                          env={**ENV, **(env or {})}, capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)


def run_script(path: os.PathLike, *args, env: dict | None = None,
               timeout: float = 600) -> subprocess.CompletedProcess:
    """Runs a Python script (e.g. tests/scripts/*.py) as `run_tool` runs a command."""
    return subprocess.run([sys.executable, str(path), *map(str, args)],
                          env={**ENV, **(env or {})}, capture_output=True, text=True,
                          timeout=timeout)


def error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    """The lines of stderr that report an error (`error: ...` or absl's flag error)."""
    return [line for line in proc.stderr.splitlines()
            if line.startswith(("error:", "FATAL Flags parsing error"))]


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    """A failed command that said why in one line, holding every fragment, with no traceback."""
    assert proc.returncode != 0, proc.stdout[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    errors = error_lines(proc)
    assert len(errors) == 1, proc.stderr[-2000:]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
