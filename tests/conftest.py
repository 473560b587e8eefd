"""Fixtures shared by the tests: the real data in ../shared/data, found by path."""

import os
import pathlib

import pytest

# Imported before any test module imports TensorFlow: mgcam_tf's __init__ then
# turns oneDNN on for the whole session, as it does for the commands.
from mgcam_tf.errors import DataError

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from harness import SHARED_DATA  # noqa: E402  (after mgcam_tf, as the comment above says)


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


_MASK_MODEL_UNAVAILABLE: list[str] = []   # why, once: a failed search is not retried per test


@pytest.fixture(scope="session")
def mask_model() -> pathlib.Path:
    """The verified BlazePose-full model file, or a skip that says why there is none."""
    from mgcam_tf.segmentation import model_file

    if not _MASK_MODEL_UNAVAILABLE:
        try:
            return model_file.resolve_model_path()
        except DataError as err:
            _MASK_MODEL_UNAVAILABLE.append(
                f"BlazePose-full model not available ({err}); set "
                f"{model_file.ENV_MODEL} to pose_landmark_full.tflite or the wheel")
    pytest.skip(_MASK_MODEL_UNAVAILABLE[0])
