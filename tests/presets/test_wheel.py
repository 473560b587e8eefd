"""The package as a user installs it: a wheel built from setup.py + pyproject.toml,
installed away from the checkout, holds the preset's files, loads the preset and runs
mgcam-eval and mgcam-search --preset (the first search quietly: the export's INFO
lines hidden)."""

import os
import pathlib
import shutil
import subprocess
import sys
import zipfile

import pytest

from mgcam_tf import presets
from mgcam_tf.version import __version__
from harness import REPO

NAMES = ("mgcam_siamese_cuhk03", "mgcam_recipe_cuhk03")
# What the wheel is built from: the files setup.py reads, and the package.
SOURCES = ("setup.py", "pyproject.toml", "MANIFEST.in", "README.md", "mgcam_tf")


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(site folder the wheel was installed into, the wheel's path)."""
    for build_dependency in ("setuptools", "wheel"):
        pytest.importorskip(build_dependency, reason=f"{build_dependency} is not installed: "
                            "the test builds the wheel without build isolation (pip install "
                            "-e '.[test]' installs it)")
    root = tmp_path_factory.mktemp("wheel")
    source, dist, site = root / "source", root / "dist", root / "site"
    source.mkdir()
    # A copy, so that the build's build/ and *.egg-info stay out of the checkout.
    for name in SOURCES:
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy2
        copy(REPO / name, source / name,
             **({"ignore": shutil.ignore_patterns("__pycache__")} if (REPO / name).is_dir()
                else {}))
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    build = subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w",
                            str(dist), str(source)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-3000:]
    wheels = list(dist.glob("*.whl"))
    assert [w.name for w in wheels] == [f"mgcam_tf-{__version__}-py3-none-any.whl"]
    install = subprocess.run([*pip, "install", "--no-deps", "--target", str(site),
                              str(wheels[0])], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-3000:]
    return site, wheels[0]


def run_installed(site: pathlib.Path, args: list[str], cwd: pathlib.Path, **env):
    """`args` with only the installed package importable, from a folder outside the checkout."""
    environ = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    environ.update(PYTHONPATH=str(site), **env)
    return subprocess.run(args, cwd=cwd, env=environ, capture_output=True, text=True,
                          timeout=300)


def test_wheel_holds_every_preset_file_and_stays_small(installed):
    _, wheel = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in NAMES:
        shipped = [p.relative_to(REPO).as_posix()
                   for p in presets.preset_dir(name).rglob("*") if p.is_file()]
        assert {"preset.json", "config.json", "checkpoints/checkpoint"} <= {
            s.split(f"{name}/", 1)[1] for s in shipped}
        assert set(shipped) <= names, set(shipped) - names
    # The package and its models, nothing else (no tests, docs or data): two presets
    # of about 5 MB of weights each.
    assert all(n.startswith(("mgcam_tf/", "mgcam_tf-")) for n in names), names
    assert wheel.stat().st_size < 16 * 2**20, wheel.stat().st_size


@pytest.mark.parametrize("name", NAMES)
def test_installed_wheel_loads_the_preset_away_from_the_checkout(installed, tmp_path, name):
    site, _ = installed
    code = ("import mgcam_tf, numpy as np\n"
            f"model = mgcam_tf.load_preset({name!r})\n"
            "h = model.embed(np.zeros((2, 160, 64, 4), 'float32')).numpy()\n"
            "print(mgcam_tf.__file__, mgcam_tf.__version__, h.shape)\n")
    proc = run_installed(site, [sys.executable, "-c", code], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    where, version, shape = proc.stdout.split(" ", 2)
    assert pathlib.Path(where).is_relative_to(site), where   # not the checkout's copy
    assert version == __version__ and shape.strip() == "(2, 128)"


@pytest.mark.parametrize("name", NAMES)
def test_installed_commands_run_the_preset(installed, shared_data, tmp_path, name):
    site, _ = installed
    mini = shared_data / "market1501_mini"
    evaluate = run_installed(site, [str(site / "bin" / "mgcam-eval"), f"--preset={name}",
                                    f"--data_dir={mini}", "--metric=euclidean",
                                    "--noprogress"], tmp_path)
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    assert "Rank-1" in evaluate.stdout and "30 queries evaluated" in evaluate.stdout
    query = sorted((mini / "query").glob("*.jpg"))[0]
    # A fresh cache: this is the preset's first use, which exports it.
    search = run_installed(site, [str(site / "bin" / "mgcam-search"), f"--preset={name}",
                                  f"--gallery={mini / 'bounding_box_test'}", "--top_k=3",
                                  str(query)], tmp_path, MGCAM_CACHE_DIR=str(tmp_path / "cache"))
    assert search.returncode == 0, search.stderr[-3000:]
    assert search.stdout.startswith(f"query {query}") and len(search.stdout.splitlines()) == 4
    for noise in ("Writing fingerprint", "fingerprinting_utils", "signature_serialization",
                  "Sharding callback"):
        assert noise not in search.stdout + search.stderr, search.stderr[-2000:]
