"""`mgcam-<tool> --help`: the tool's doc, an example and its own flags, exit 0, no TensorFlow."""

import io
import os
import re
import subprocess
import sys

import pytest
from harness import REPO

ENV = {**os.environ, "PYTHONPATH": str(REPO)}
ENV.pop("TF_CPP_MIN_LOG_LEVEL", None)


def console_scripts() -> dict:
    """setup.py's console scripts, read from its text (setup.py is not importable)."""
    text = (REPO / "setup.py").read_text()
    return dict(re.findall(r'"(mgcam-[a-z-]+)=([\w.]+):run"', text))


TOOLS = console_scripts()
# Each tool's flags that must show, required ones marked.
# (--saved_model / --model_dir are one of two with --preset: not marked required.)
REQUIRED = {"mgcam-train": ["model_dir"], "mgcam-export": ["export_dir"],
            "mgcam-masks": ["data_dir"], "mgcam-search": ["gallery"],
            "mgcam-verify": [], "mgcam-extract": ["image_dir", "output_dir"],
            "mgcam-attention": ["image_dir", "output_dir"]}


def test_every_console_script_is_covered():
    assert set(TOOLS) == {"mgcam-train", "mgcam-eval", "mgcam-masks", "mgcam-export",
                          "mgcam-extract", "mgcam-search", "mgcam-verify",
                          "mgcam-serving-client", "mgcam-attention"}


@pytest.mark.parametrize("tool", sorted(TOOLS))
def test_help_prints_doc_example_and_own_flags_and_exits_0(tool):
    module = TOOLS[tool]
    # The entry point exactly as the console script calls it; at exit, whether
    # TensorFlow was imported (it must not be, for --help to answer at once).
    code = ("import atexit, sys\n"
            "atexit.register(lambda: sys.stderr.write("
            "'\\nTF_IMPORTED=%s\\n' % ('tensorflow' in sys.modules)))\n"
            f"sys.argv = [{tool!r}, '--help']\n"
            f"from {module} import run\n"
            "run()\n")
    proc = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "TF_IMPORTED=False" in proc.stderr
    out = proc.stdout
    assert out.startswith(f"{tool}:"), out[:200]          # what the tool does
    assert re.search(rf"^\s+{tool} --", out, re.M), out    # an example command
    assert "Try --helpfull" not in out and "\nflags:\n" in out
    flag_lines = re.findall(r"^  --(\w+)(.*)$", out, re.M)
    assert len(flag_lines) >= 3
    marked = {name for name, rest in flag_lines if "[required]" in rest}
    for name in REQUIRED.get(tool, []):
        assert name in marked, (name, marked)
    assert "--verbose" in out


def test_quiet_tensorflow_startup_unless_verbose():
    code = "import mgcam_tf.cli.common\nimport tensorflow\nprint('imported')\n"
    quiet = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True,
                           text=True, timeout=120)
    assert quiet.returncode == 0 and "imported" in quiet.stdout, quiet.stderr[-2000:]
    for noise in ("InitializeLog", "oneDNN", "cpu_feature_guard"):
        assert noise not in quiet.stderr, quiet.stderr


def test_progress_bar_shows_no_rate_before_two_updates(monkeypatch):
    from mgcam_tf.cli import common

    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    bar = common.ProgressBar("train", total=100)
    bar(0, 100)
    assert "0.0/s" not in err.getvalue() and "ETA 0:00" not in err.getvalue()
    assert "ETA -:--" in err.getvalue()
    bar.start -= 10.0  # ten seconds for the next 10 steps
    bar(10, 100)
    assert re.search(r"1\.0/s ETA 1:30", err.getvalue()), err.getvalue()
