"""BlazePose-full's person segmentation as TensorFlow ops, weights read from the .tflite file.

`pose_landmark_full.tflite` computes landmarks, heatmaps and a segmentation
map from one trunk. Only the subgraph that feeds output `Identity_2` (the
[1, 256, 256, 1] segmentation logits) is rebuilt here: 42 CONV_2D, 26
DEPTHWISE_CONV_2D, 17 ADD, 5 PAD and 5 RESIZE_BILINEAR ops, whose float16
weights the file dequantises with DEQUANTIZE ops (folded here: float16 ->
float32 is exact). The landmark heads are pruned.

The flatbuffer is parsed with the schema module TensorFlow ships
(`tensorflow.lite.python.schema_py_generated`, through
`tensorflow.lite.tools.flatbuffer_utils`): the interpreter's op details lack
the strides, paddings and fused activations. No weight is stored in this
repository; they are read from the checked file (`model_file`) when the
graph is built, and live in the exported SavedModel as variables.

`SegmentationNetwork` runs any batch size (the file is fixed to batch 1).
Its logits match the interpreter's (XNNPACK) to about 1e-4 (float32
summation order differs); masks, which keep only the sign, agree on all but
a handful of pixels per image (see tests/segmentation/test_blazepose_graph.py).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Sequence

import numpy as np
import tensorflow as tf

from mgcam_tf.errors import DataError

OUTPUT_NAME = "Identity_2"
INPUT_SIZE = 256

# Enums of the TFLite schema (tensorflow/lite/schema/schema.fbs).
_PADDING = {0: "SAME", 1: "VALID"}
_ACT_NONE, _ACT_RELU, _ACT_RELU6 = 0, 1, 3
_NUMPY_DTYPE = {0: np.float32, 1: np.float16, 2: np.int32, 4: np.int64}

#: The op types the rebuilt subgraph may contain (DEQUANTIZE is folded).
SUPPORTED_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "ADD", "PAD", "RESIZE_BILINEAR")


@dataclasses.dataclass(frozen=True)
class GraphOp:
    """One op of the pruned subgraph: TFLite tensor indices and options."""
    index: int                 # position in the file's operator list
    kind: str                  # e.g. "CONV_2D"
    inputs: tuple[int, ...]    # tensor indices (-1: absent optional input)
    output: int
    stride: tuple[int, int] = (1, 1)
    padding: str = "VALID"
    activation: int = _ACT_NONE


@dataclasses.dataclass(frozen=True)
class SegmentationGraph:
    """The pruned subgraph: ops in execution order and its constant tensors."""
    input: int
    output: int
    ops: tuple[GraphOp, ...]
    constants: dict            # tensor index -> np.ndarray (float32 weights, int32 shapes)
    tensor_names: dict         # tensor index -> name (for messages and tests)


def read_segmentation_graph(model_path: str | os.PathLike) -> SegmentationGraph:
    """Parses the .tflite file and keeps the ops that feed `Identity_2`.

    Raises:
      DataError: the file is not a TFLite model, has no `Identity_2`, or
        needs an op this module does not implement (named).
    """
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    try:
        with open(model_path, "rb") as f:
            model = flatbuffer_utils.read_model_from_bytearray(bytearray(f.read()))
    except Exception as err:  # noqa: BLE001 - the flatbuffer reader raises anything
        raise DataError(f"{model_path}: not a readable TFLite model ({err})") from err
    builtin = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    kinds = [builtin.get(max(c.builtinCode, c.deprecatedBuiltinCode), "?")
             for c in model.operatorCodes]
    graph = model.subgraphs[0]
    names = {i: t.name.decode() for i, t in enumerate(graph.tensors)}
    outputs = [i for i in graph.outputs if names[i] == OUTPUT_NAME]
    if not outputs or len(graph.inputs) != 1:
        raise DataError(f"{model_path}: no output {OUTPUT_NAME} (not BlazePose-full)")

    producer = {t: k for k, op in enumerate(graph.operators) for t in op.outputs}
    needed, stack = set(), [outputs[0]]
    while stack:
        k = producer.get(stack.pop())
        if k is not None and k not in needed:
            needed.add(k)
            stack.extend(i for i in graph.operators[k].inputs if i >= 0)

    def constant(index: int) -> np.ndarray:
        tensor = graph.tensors[index]
        data = model.buffers[tensor.buffer].data
        dtype = _NUMPY_DTYPE.get(tensor.type)
        if data is None or dtype is None:
            raise DataError(f"{model_path}: tensor {names[index]} is not a readable constant")
        return np.frombuffer(bytes(data), dtype).reshape(list(tensor.shape))

    constants: dict[int, np.ndarray] = {}
    ops: list[GraphOp] = []
    for k in sorted(needed):        # the file lists operators in execution order
        op = graph.operators[k]
        kind = kinds[op.opcodeIndex]
        ins = tuple(int(i) for i in op.inputs)
        if kind == "DEQUANTIZE":
            # float16 weights -> float32: exact, so folded into the constant.
            constants[int(op.outputs[0])] = constant(ins[0]).astype(np.float32)
            continue
        if kind not in SUPPORTED_OPS:
            raise DataError(f"{model_path}: op {kind} (#{k}) feeds {OUTPUT_NAME} but is "
                            "not implemented by mgcam_tf.segmentation.blazepose_graph")
        opts = op.builtinOptions
        fields = {}
        if kind in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            if (opts.dilationHFactor, opts.dilationWFactor) != (1, 1) or (
                    kind == "DEPTHWISE_CONV_2D" and opts.depthMultiplier != 1):
                raise DataError(f"{model_path}: op #{k} {kind} uses dilation or a depth "
                                "multiplier, which is not implemented")
            fields = dict(stride=(opts.strideH, opts.strideW), padding=_PADDING[opts.padding],
                          activation=opts.fusedActivationFunction)
        elif kind == "ADD":
            fields = dict(activation=opts.fusedActivationFunction)
        elif kind == "RESIZE_BILINEAR" and (opts.alignCorners or not opts.halfPixelCenters):
            raise DataError(f"{model_path}: op #{k} RESIZE_BILINEAR without half-pixel "
                            "centres is not implemented")
        if fields.get("activation", _ACT_NONE) not in (_ACT_NONE, _ACT_RELU, _ACT_RELU6):
            raise DataError(f"{model_path}: op #{k} {kind} has an unsupported fused activation")
        for i in ins:
            if i >= 0 and i not in producer and i not in constants and i != graph.inputs[0]:
                constants[i] = constant(i)
        ops.append(GraphOp(index=k, kind=kind, inputs=ins, output=int(op.outputs[0]), **fields))
    return SegmentationGraph(input=int(graph.inputs[0]), output=int(outputs[0]),
                             ops=tuple(ops), constants=constants, tensor_names=names)


def _activate(x: tf.Tensor, activation: int) -> tf.Tensor:
    if activation == _ACT_RELU6:
        return tf.nn.relu6(x)
    if activation == _ACT_RELU:
        return tf.nn.relu(x)
    return x


def apply_op(op: GraphOp, args: Sequence[tf.Tensor]) -> tf.Tensor:
    """One TFLite op as TF ops; `args` are its inputs in the file's order
    (weights already float32, NHWC activations, any batch size)."""
    if op.kind == "CONV_2D":
        x, kernel = args[0], args[1]
        # TFLite kernels are [out, kh, kw, in]; TF wants [kh, kw, in, out].
        y = tf.nn.conv2d(x, tf.transpose(kernel, [1, 2, 3, 0]),
                         strides=[1, *op.stride, 1], padding=op.padding)
        if len(args) > 2 and args[2] is not None:
            y = tf.nn.bias_add(y, args[2])
        return _activate(y, op.activation)
    if op.kind == "DEPTHWISE_CONV_2D":
        x, kernel = args[0], args[1]
        # [1, kh, kw, channels] -> [kh, kw, channels, 1] (multiplier 1).
        y = tf.nn.depthwise_conv2d(x, tf.transpose(kernel, [1, 2, 3, 0]),
                                   strides=[1, *op.stride, 1], padding=op.padding)
        if len(args) > 2 and args[2] is not None:
            y = tf.nn.bias_add(y, args[2])
        return _activate(y, op.activation)
    if op.kind == "ADD":
        return _activate(args[0] + args[1], op.activation)
    if op.kind == "PAD":
        return tf.pad(args[0], args[1])
    if op.kind == "RESIZE_BILINEAR":
        return tf.raw_ops.ResizeBilinear(images=args[0], size=args[1], half_pixel_centers=True)
    raise ValueError(f"unsupported op {op.kind}")


class SegmentationNetwork(tf.Module):
    """float32 [N, 256, 256, 3] RGB in [0, 1] -> float32 [N, 256, 256, 1] logits.

    Float weights are non-trainable variables (a SavedModel that tracks this
    module stores them under variables/); integer shape operands (paddings,
    resize sizes) are graph constants.

    Args:
      model_path: the verified `pose_landmark_full.tflite` (see
        `mgcam_tf.segmentation.model_file.resolve_model_path`).
    """

    def __init__(self, model_path: str | os.PathLike, name: str = "blazepose_segmentation"):
        super().__init__(name=name)
        self.graph = read_segmentation_graph(model_path)
        self._ops = self.graph.ops
        with self.name_scope:
            self.weights = {}
            for index, value in sorted(self.graph.constants.items()):
                if value.dtype == np.float32:
                    self.weights[str(index)] = tf.Variable(value, trainable=False,
                                                           name=f"t{index}")
        self._int_constants = {i: v for i, v in self.graph.constants.items()
                               if v.dtype != np.float32}

    def _operand(self, index: int, values: dict) -> tf.Tensor | None:
        if index < 0:
            return None
        if index in values:
            return values[index]
        if str(index) in self.weights:
            return self.weights[str(index)]
        return tf.constant(self._int_constants[index])

    def __call__(self, images: tf.Tensor) -> tf.Tensor:
        values = {self.graph.input: tf.convert_to_tensor(images, tf.float32)}
        for op in self._ops:
            values[op.output] = apply_op(op, [self._operand(i, values) for i in op.inputs])
        return values[self.graph.output]


__all__ = ["SegmentationNetwork", "SegmentationGraph", "GraphOp", "read_segmentation_graph",
           "apply_op", "SUPPORTED_OPS", "OUTPUT_NAME", "INPUT_SIZE"]
