"""BodySegmenter: BlazePose-full's segmentation head on a person crop -> binary mask.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import warnings
import numpy as np
from mgcam_tf.errors import DataError
from mgcam_tf.segmentation import opencv_resize

# -- the recipe ------------------------------------------------------------------
INPUT_SIZE = 256


LONG_SIDE = INPUT_SIZE / 1.15          # ~222.6 px: the person fills 87 % of the input


OUTPUT_NAME = "Identity_2"             # segmentation logits [1, 256, 256, 1]


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
                      rows_back=opencv_resize.bilinear_taps(h, height), cols_back=opencv_resize.bilinear_taps(w, width))


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
        return opencv_resize.resize_area_u8(image, height, width)
    return opencv_resize.resize_linear_u8(image, height, width)


class BodySegmenter:
    """Runs BlazePose-full's segmentation head on person crops (the recipe of `graph_recipe`).

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
