"""Fixtures shared by the tests: the real data in ../shared/data, found by path."""

import os
import pathlib

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = pathlib.Path(
    os.environ.get("MGCAM_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    """../shared/data (read-only in CI); skips the test with a reason when absent."""
    if not (SHARED_DATA / "cuhk03_pair1").is_dir():
        pytest.skip(f"real ReID data not found at {SHARED_DATA} "
                    "(set MGCAM_SHARED_DATA to the shared/data folder)")
    return SHARED_DATA


def pytest_addoption(parser):
    parser.addoption("--crash-full", action="store_true", default=False,
                     help="tests/test_crashes.py: kill every long command at all its kill "
                          "points (default: one kill point each)")
    parser.addoption("--full-matrix", action="store_true", default=False,
                     help="tests/test_bad_inputs.py: every bad file also for mgcam-train, "
                          "-eval and -export (default: corrupt, missing mask, non-ASCII)")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow_crash: a kill -9 test; reduced (one kill point) "
                            "unless --crash-full")
