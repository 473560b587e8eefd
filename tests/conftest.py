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
