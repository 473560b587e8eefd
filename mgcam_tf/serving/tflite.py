"""TensorFlow Lite and ONNX files of a model's embedding, for phones, edge boxes and ONNX runtimes.

Both hold one function, the SavedModel's `serving_rgbm` path without its
input checks: `rgbm` float32 [N, 160, 64, 4] (already through
`mgcam_tf.data.preprocess.preprocess`) -> `embedding` float32 [N, D]
(h_full, `model.inference_outputs(rgbm)["h_full"]`). N is variable (TFLite:
`Interpreter.resize_tensor_input`, which `TFLiteEmbedder` does).

TFLite quantisations (`QUANTIZATIONS`):

- `float32`: the graph as it is; embeddings equal the SavedModel's up to
  float rounding (about 1e-5).
- `float16`: post-training float16 quantisation: weights stored as float16
  (half the file), computed in float32 on CPUs (dequantised at load).
- `int8`: full-integer post-training quantisation: weights and activations
  int8, scales calibrated on a representative data set of real preprocessed
  crops (`representative_rgbm`: images of a split through
  `mgcam_tf.data.pipeline.eval_dataset`, the evaluation's own
  preprocessing). The input and output stay float32 (a quantize op at the
  entry, a dequantize at the exit), so the interface is the same for all
  three and a caller does not handle scales and zero points.

The checks of the SavedModel (shape, NaN) are not in these files: TFLite's
builtin ops have no Assert, and the shape is fixed by the file's input
tensor anyway. Files are written atomically (`mgcam_tf.atomic_files`).
"""

from __future__ import annotations

import os
import pathlib
from typing import Any, Callable, Iterator, Optional

import numpy as np
import tensorflow as tf

from mgcam_tf import atomic_files
from mgcam_tf.conventions import IMAGE_HEIGHT, IMAGE_WIDTH, INPUT_RGBM, OUTPUT_EMBEDDING
from mgcam_tf.errors import ConfigError

FORMATS = ("saved_model", "tflite", "onnx")
QUANTIZATIONS = ("float32", "float16", "int8")
DEFAULT_REPRESENTATIVE_IMAGES = 200
# tf2onnx 1.17.0 (the latest) converts this graph under TensorFlow 2.21
# (checked with onnxruntime 1.32: max |difference| ~1e-6); opset 17 is what
# onnxruntime >= 1.13 runs.
ONNX_OPSET = 17
ONNX_REQUIREMENT = "tf2onnx==1.17.0 onnx onnxruntime"


def check_format(name: str) -> str:
    """`name` if it is one of FORMATS; ConfigError naming --format otherwise."""
    if name not in FORMATS:
        raise ConfigError(f"--format={name}: must be one of {', '.join(FORMATS)}")
    return name


def check_quantization(name: str) -> str:
    """`name` if it is one of QUANTIZATIONS; ConfigError naming --tflite_quantization otherwise."""
    if name not in QUANTIZATIONS:
        raise ConfigError(f"--tflite_quantization={name}: must be one of "
                          f"{', '.join(QUANTIZATIONS)}")
    return name


def embedding_tf_function(model: Any) -> tf.types.experimental.PolymorphicFunction:
    """rgbm float32 [N, 160, 64, 4] -> {"embedding": float32 [N, D]} of `model`, a tf.function."""

    @tf.function(input_signature=[
        tf.TensorSpec([None, IMAGE_HEIGHT, IMAGE_WIDTH, 4], tf.float32, name=INPUT_RGBM)])
    def embed(rgbm):
        # attention=False: h_full does not depend on the attention branch, so
        # the graph holds only stem, stages 1-2 and the full stream.
        h_full = model.inference_outputs(rgbm, attention=False)["h_full"]
        return {OUTPUT_EMBEDDING: tf.cast(h_full, tf.float32)}

    return embed


def embedding_function(model: Any) -> tf.types.experimental.ConcreteFunction:
    """The concrete function of `embedding_tf_function` (what the TFLite converter takes)."""
    return embedding_tf_function(model).get_concrete_function()


def spread_subset(split: Any, num_images: int) -> Any:
    """`num_images` images of `split` evenly spread over its file order (so all
    identities and cameras, not the first few, calibrate the int8 scales)."""
    import dataclasses

    n = len(split)
    if n == 0:
        raise ConfigError("the representative split holds no images")
    idx = np.unique(np.linspace(0, n - 1, min(num_images, n)).round().astype(int))
    return dataclasses.replace(
        split, image_paths=tuple(split.image_paths[i] for i in idx),
        mask_paths=tuple(split.mask_paths[i] for i in idx),
        pids=np.asarray(split.pids)[idx], camids=np.asarray(split.camids)[idx],
        tracklets=None if split.tracklets is None else np.asarray(split.tracklets)[idx])


def representative_rgbm(split: Any, num_images: int = DEFAULT_REPRESENTATIVE_IMAGES
                        ) -> Callable[[], Iterator[list[np.ndarray]]]:
    """The int8 converter's representative dataset: preprocessed crops of `split`
    (a `mgcam_tf.data.layouts.Split`), one image per sample, through
    `mgcam_tf.data.pipeline.eval_dataset`."""
    from mgcam_tf.data import pipeline

    subset = spread_subset(split, num_images)

    def samples():
        for batch in pipeline.eval_dataset(subset, 1):
            yield [batch["rgbm"].numpy()]

    return samples


def convert_tflite(model: Any, quantization: str = "float32",
                   representative: Optional[Callable[[], Iterator[list]]] = None) -> bytes:
    """The .tflite flatbuffer of `model`'s embedding (module doc).

    representative: required for int8 (`representative_rgbm`), unused otherwise.
    Raises ConfigError on an unknown quantization or int8 without data.
    """
    check_quantization(quantization)
    if quantization == "int8" and representative is None:
        raise ConfigError("--tflite_quantization=int8 needs a representative data set "
                          "(--representative_data): real crops calibrate the int8 scales")
    # The converter saves (trackable, function) as a SavedModel first; a Keras
    # 3 model does not track its tf.Variables there (the file would read
    # uninitialised variables), so a tf.Module holding them is the trackable,
    # as in `mgcam_tf.serving.export.export_saved_model`.
    root = tf.Module(name="mgcam_tflite")
    root.model_variables = [getattr(v, "value", v) for v in model.variables]
    root.embed = embedding_function(model)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([root.embed], root)
    if quantization == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantization == "int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        # Every op int8 (conversion fails rather than silently keeping a
        # float op); input and output types are left float32 on purpose.
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    return converter.convert()


def write_tflite(model: Any, path: os.PathLike, quantization: str = "float32",
                 representative: Optional[Callable[[], Iterator[list]]] = None) -> pathlib.Path:
    """Converts (`convert_tflite`) and writes the file atomically; returns its path."""
    data = convert_tflite(model, quantization, representative)
    atomic_files.write_bytes(path, data, make_parents=True)
    return pathlib.Path(path)


class TFLiteEmbedder:
    """Runs a .tflite of this module: float32 rgbm [N, 160, 64, 4] -> float32 [N, D].

    Resizes the input when N changes (the file's batch dimension is variable).
    """

    def __init__(self, model: os.PathLike | bytes, num_threads: Optional[int] = None):
        import warnings

        source = {"model_content": bytes(model)} if isinstance(model, (bytes, bytearray)) \
            else {"model_path": str(model)}
        if "model_path" in source and not pathlib.Path(model).is_file():
            raise ConfigError(f"{model}: TFLite file not found")
        with warnings.catch_warnings():
            # TF 2.21's interpreter warns that it moves to ai_edge_litert; it
            # still runs these files, and the warning would reach every user.
            warnings.simplefilter("ignore", UserWarning)
            self.interpreter = tf.lite.Interpreter(**source, num_threads=num_threads)
        self._input = self.interpreter.get_input_details()[0]["index"]
        self._output = self.interpreter.get_output_details()[0]["index"]
        self._batch = None

    def __call__(self, rgbm: np.ndarray) -> np.ndarray:
        rgbm = np.ascontiguousarray(rgbm, dtype=np.float32)
        if rgbm.ndim != 4 or rgbm.shape[1:] != (IMAGE_HEIGHT, IMAGE_WIDTH, 4) or not len(rgbm):
            raise ConfigError(f"rgbm must be float32 [N >= 1, {IMAGE_HEIGHT}, {IMAGE_WIDTH}, 4], "
                              f"got shape {list(rgbm.shape)}")
        if rgbm.shape[0] != self._batch:
            self.interpreter.resize_tensor_input(self._input, list(rgbm.shape))
            self.interpreter.allocate_tensors()
            self._batch = rgbm.shape[0]
        self.interpreter.set_tensor(self._input, rgbm)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self._output).copy()


def convert_onnx(model: Any, opset: int = ONNX_OPSET) -> bytes:
    """The ONNX ModelProto (serialised) of `model`'s embedding, with tf2onnx.

    Raises ConfigError when tf2onnx is not installed.
    """
    try:
        import tf2onnx
    except ImportError:
        raise ConfigError(f"--format=onnx needs tf2onnx, which is not installed: "
                          f"pip install {ONNX_REQUIREMENT}") from None
    import logging

    # tf2onnx logs each optimiser pass at INFO through absl; a user sees none of it.
    logging.getLogger("tf2onnx").setLevel(logging.WARNING)
    fn = embedding_tf_function(model)
    proto, _ = tf2onnx.convert.from_function(fn, input_signature=fn.input_signature,
                                             opset=opset)
    return proto.SerializeToString()


def write_onnx(model: Any, path: os.PathLike, opset: int = ONNX_OPSET) -> pathlib.Path:
    """Converts (`convert_onnx`) and writes the file atomically; returns its path."""
    data = convert_onnx(model, opset)
    atomic_files.write_bytes(path, data, make_parents=True)
    return pathlib.Path(path)


__all__ = ["FORMATS", "QUANTIZATIONS", "ONNX_OPSET", "check_format", "check_quantization",
           "embedding_tf_function", "embedding_function", "representative_rgbm", "spread_subset", "convert_tflite",
           "write_tflite", "TFLiteEmbedder", "convert_onnx", "write_onnx"]
