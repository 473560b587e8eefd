"""BlazePose-full's segmentation rebuilt in TF ops (blazepose_graph) and the recipe's
resizes in TF ops (graph_recipe), against the TFLite interpreter and the numpy ports.

Needs `pose_landmark_full.tflite` (see tests/conftest.py's mask_model
fixture: `$MGCAM_MASK_MODEL` or the cache, else fetched once with pip);
skipped with the reason when it cannot be had.
"""

import collections
import warnings

import numpy as np
import pytest
import tensorflow as tf

from mgcam_tf.segmentation import blazepose_graph, graph_recipe, opencv_resize
from mgcam_tf.segmentation import segmenter


@pytest.fixture(scope="module")
def network(mask_model):
    return blazepose_graph.SegmentationNetwork(mask_model)


def canvases(shared_data, n):
    """Letterboxed canvases of the first n CUHK03 queries, as the recipe makes them."""
    paths = sorted((shared_data / "cuhk03_pair1" / "query").glob("*.jpg"))[:n]
    out = np.zeros((n, 256, 256, 3), np.float32)
    for i, path in enumerate(paths):
        image = segmenter.decode_image(str(path))
        box = segmenter._letterbox(*image.shape[:2])
        resized = segmenter.letterbox_resize(image, box.height, box.width)
        out[i, box.top:box.top + box.height, box.left:box.left + box.width] = (
            resized.astype(np.float32) / np.float32(255))
    return out


def test_the_pruned_subgraph_uses_only_implemented_ops(network):
    kinds = collections.Counter(op.kind for op in network.graph.ops)
    assert set(kinds) <= set(blazepose_graph.SUPPORTED_OPS)
    assert kinds == {"CONV_2D": 42, "DEPTHWISE_CONV_2D": 26, "ADD": 17, "PAD": 5,
                     "RESIZE_BILINEAR": 5}
    # The weights are read from the file, not stored anywhere in the package.
    assert sum(int(np.prod(v.shape)) for v in network.weights.values()) > 100_000


def test_each_op_type_matches_the_interpreter_on_its_own_inputs(network, mask_model, shared_data):
    # The reference kernels (no XNNPACK delegate) keep every intermediate tensor.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        interpreter = tf.lite.Interpreter(
            model_path=str(mask_model), experimental_preserve_all_tensors=True,
            experimental_op_resolver_type=(
                tf.lite.experimental.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES))
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], canvases(shared_data, 1))
    interpreter.invoke()
    graph = network.graph
    worst = collections.defaultdict(float)
    for op in graph.ops:
        args = [None if i < 0 else tf.constant(graph.constants[i]) if i in graph.constants
                else tf.constant(interpreter.get_tensor(i)) for i in op.inputs]
        got = blazepose_graph.apply_op(op, args).numpy()
        want = interpreter.get_tensor(op.output)
        assert got.shape == want.shape, (op.kind, op.index)
        err = float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-6))
        worst[op.kind] = max(worst[op.kind], err)
    print("worst relative error per op type:", dict(worst))
    assert set(worst) == set(blazepose_graph.SUPPORTED_OPS)
    for kind, err in worst.items():
        assert err < 1e-5, (kind, err)


def test_whole_network_matches_the_interpreters_logits(network, mask_model, shared_data):
    batch = canvases(shared_data, 4)
    got = tf.function(network.__call__)(batch).numpy()
    seg = segmenter.BodySegmenter(mask_model)
    for i in range(len(batch)):
        seg._interpreter.set_tensor(seg._input_index, batch[i:i + 1])
        seg._interpreter.invoke()
        want = seg._interpreter.get_tensor(seg._output_index)[0]
        rel = np.abs(got[i] - want).max() / np.abs(want).max()
        flips = int(((got[i] > 0) != (want > 0)).sum())
        print(f"image {i}: max |logit diff| / range {rel:.2e}, sign flips {flips} of 65536")
        assert rel < 1e-3
        assert flips <= 20


@pytest.mark.parametrize("size", [(128, 64, 222, 111), (300, 100, 222, 74), (444, 222, 222, 111),
                                  (900, 400, 222, 99), (333, 111, 111, 37), (600, 300, 200, 100),
                                  (64, 32, 222, 111), (250, 90, 222, 80), (160, 60, 222, 83)])
def test_graph_resizes_are_bit_exact_ports_of_opencv(size):
    h, w, nh, nw = size
    image = np.random.default_rng(h * w).integers(0, 256, (h, w, 3), dtype=np.uint8)
    if nh < h or nw < w:
        want = opencv_resize.resize_area_u8(image, nh, nw)
    else:
        want = opencv_resize.resize_linear_u8(image, nh, nw)
    got = graph_recipe.letterbox_resize(tf.constant(image[None]), nh, nw).numpy()[0]
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("shape", [(196, 66), (325, 140), (128, 64), (256, 128), (30, 300),
                                   (257, 1), (1000, 1)])
def test_letterbox_geometry_and_logit_resize_match_the_numpy_recipe(shape):
    h, w = shape
    box = segmenter._letterbox(h, w)
    geometry = [int(x) for x in graph_recipe.letterbox_geometry(h, w)]
    assert geometry == [box.height, box.width, box.top, box.left]
    logits = np.random.default_rng(h).normal(size=(256, 256)).astype(np.float32)
    cut = logits[box.top:box.top + box.height, box.left:box.left + box.width]
    want = segmenter._logits_back(cut, box)
    got = graph_recipe.logits_to_crop(tf.constant(logits[None, :, :, None]),
                                      tuple(geometry), h, w).numpy()[0, ..., 0]
    np.testing.assert_array_equal(got, want)
