"""A small body-mask network distilled from BlazePose-full, at the model's input size.

BlazePose-full's segmentation (`segmenter`, `blazepose_graph`) runs a
256x256 letterbox in which the pedestrian fills about a third of the pixels,
several times the cost of the re-identification itself (docs/PERFORMANCE.md,
"Cheaper masks"). This network
sees the crop as the re-identification network does, resized to 160x64
(`mgcam_tf.image_io.resize_to_input`, RGB / 255), and predicts
BlazePose's body logits at that size: a tiny U-Net (Ronneberger et al.,
MICCAI 2015) with MobileNet-style depthwise-separable blocks (Howard et al.,
2017); `distilled_mask_net.json` records its size.

Its masks follow the recipe's last step: the 160x64 logits resized
bilinearly (half-pixel centres) to the crop's size, body where logit > 0.
It was trained (`tools/train_mask_net.py`) on BlazePose-full's masks of the
`cuhk03_pair1/bounding_box_train` crops only; `distilled_mask_net.json`
beside the weights records the data, the command and its measured
agreement with BlazePose on the dev split (query + gallery, never trained on).
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Iterator, Optional, Sequence

import numpy as np

from mgcam_tf.conventions import IMAGE_HEIGHT, IMAGE_WIDTH
from mgcam_tf.errors import DataError

#: The network's input, (height, width): the re-identification model's.
INPUT_SIZE = (IMAGE_HEIGHT, IMAGE_WIDTH)
#: The shipped weights and their provenance (package data beside this module).
WEIGHTS_FILE = "distilled_mask_net.weights.h5"
PROVENANCE_FILE = "distilled_mask_net.json"
_PACKAGE_DIR = pathlib.Path(__file__).resolve().parent


def shipped_weights_path() -> pathlib.Path:
    """The weights file shipped in the package."""
    return _PACKAGE_DIR / WEIGHTS_FILE


def provenance() -> dict:
    """The shipped weights' provenance record (data, command, commit, agreement)."""
    path = _PACKAGE_DIR / PROVENANCE_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: cannot read the mask network's provenance ({err})") from err


def build_mask_net(base: int = 16, name: str = "distilled_mask_net"):
    """The network: float32 [N, 160, 64, 3] RGB in [0, 1] -> float32 [N, 160, 64, 1] logits.

    Encoder: 3x3 stride-2 convolutions to 1/2, 1/4, 1/8 and 1/16 of the input
    (80x32 .. 10x4), each followed by depthwise-separable 3x3 blocks with a
    residual connection; decoder: bilinear x2 upsampling, concatenation with
    the encoder's map of that size, 1x1 fusion and a separable block, up to
    80x32; a last bilinear x2 to 160x64 concatenated with a full-resolution
    3x3 stem of 8 channels, then two 1x1 convolutions to one logit.
    BatchNorm + ReLU after every convolution but the last. Plain Keras layers:
    the model serialises with `model.to_json()` / `save`.

    Args:
      base: channels of the first stage (stages have base, 2, 4, 8 x base).
    """
    import keras
    from keras import layers

    def conv_bn(x, filters, kernel=3, stride=1, label=""):
        x = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False,
                          name=f"{label}_conv")(x)
        x = layers.BatchNormalization(name=f"{label}_bn")(x)
        return layers.ReLU(name=f"{label}_relu")(x)

    def separable(x, label):
        y = layers.SeparableConv2D(x.shape[-1], 3, padding="same", use_bias=False,
                                   name=f"{label}_sep")(x)
        y = layers.BatchNormalization(name=f"{label}_bn")(y)
        y = layers.Add(name=f"{label}_add")([x, y])
        return layers.ReLU(name=f"{label}_relu")(y)

    inputs = keras.Input((*INPUT_SIZE, 3), name="rgb")
    stem = conv_bn(inputs, 8, label="stem")                         # 160x64x8
    skips = []
    x = inputs
    for level, (filters, blocks) in enumerate(
            [(base, 1), (2 * base, 1), (4 * base, 2), (8 * base, 2)], start=1):
        x = conv_bn(x, filters, stride=2, label=f"down{level}")
        for b in range(blocks):
            x = separable(x, f"down{level}_block{b}")
        skips.append(x)                                             # 80x32 .. 10x4
    for level in (3, 2, 1):
        x = layers.UpSampling2D(2, interpolation="bilinear", name=f"up{level}_resize")(x)
        x = layers.Concatenate(name=f"up{level}_concat")([x, skips[level - 1]])
        x = conv_bn(x, skips[level - 1].shape[-1], kernel=1, label=f"up{level}_fuse")
        x = separable(x, f"up{level}_block")
    x = layers.UpSampling2D(2, interpolation="bilinear", name="up0_resize")(x)
    x = layers.Concatenate(name="up0_concat")([x, stem])
    x = conv_bn(x, 8, kernel=1, label="up0_fuse")
    logits = layers.Conv2D(1, 1, name="logits", dtype="float32")(x)
    return keras.Model(inputs, logits, name=name)


def load_mask_net(weights_path: Optional[os.PathLike] = None):
    """`build_mask_net()` with trained weights (default: the shipped ones).

    Raises:
      DataError: the weights file is missing or does not fit the network.
    """
    path = pathlib.Path(weights_path) if weights_path else shipped_weights_path()
    if not path.is_file():
        raise DataError(f"{path}: the distilled mask network's weights are missing")
    net = build_mask_net()
    try:
        net.load_weights(str(path))
    except (OSError, ValueError, KeyError) as err:
        raise DataError(f"{path}: not weights of the distilled mask network ({err})") from err
    return net


def network_input(pixels):
    """uint8 RGB [N, H, W, 3] (any size) -> float32 [N, 160, 64, 3] in [0, 1].

    The same 160x64 pixels the re-identification network is given
    (`resize_to_input`: bilinear, rounded to uint8)."""
    import tensorflow as tf
    from mgcam_tf.image_io import resize_to_input

    return tf.cast(resize_to_input(pixels), tf.float32) / 255.0


def logits_to_size(logits, height, width):
    """float32 logits [N, 160, 64, 1] -> [N, height, width, 1], bilinear (half-pixel centres)."""
    import tensorflow as tf

    return tf.raw_ops.ResizeBilinear(images=logits, size=tf.stack([height, width]),
                                     half_pixel_centers=True)


def crop_masks(net, images):
    """Masks uint8 0/255 [N, H, W, 1] of uint8 RGB crops [N, H, W, 3] of one size.

    The contract of `graph_recipe.crop_masks`, with this network in place of
    BlazePose's letterbox recipe."""
    import tensorflow as tf
    from mgcam_tf.segmentation.graph_recipe import binary_mask

    shape = tf.shape(images)
    logits = net(network_input(images), training=False)
    return binary_mask(logits_to_size(logits, shape[1], shape[2]))


def _decode_for_network(path):
    """(float32 [160, 64, 3] network input, int32 [2] crop size, path) of one file."""
    import tensorflow as tf

    from mgcam_tf.segmentation.graph_recipe import decode_crop

    image = decode_crop(tf.io.read_file(path))
    return network_input(image[tf.newaxis])[0], tf.shape(image)[:2], path


def mask_pngs(net, image_paths: Sequence[str], batch_size: int = 64,
              parallel_reads: Optional[int] = None) -> Iterator[tuple[str, bytes]]:
    """(image path, PNG bytes of its 0/255 mask at the crop's size) for every decodable image.

    Files are read and decoded by tf.data (in parallel with the network),
    the network runs on batches of `batch_size`, each batch's logits are
    resized to their crops and encoded in the graph. Images that cannot be
    decoded are left out (the caller finds them missing); order is kept.
    `parallel_reads`: decoding threads (None: tf.data's autotuning).
    """
    import tensorflow as tf
    from mgcam_tf.segmentation.graph_recipe import binary_mask

    @tf.function(reduce_retracing=True)
    def batch_pngs(inputs, sizes):
        logits = net(inputs, training=False)

        def one(args):
            logit, size = args
            mask = binary_mask(logits_to_size(logit[tf.newaxis], size[0], size[1]))
            return tf.io.encode_png(mask[0])

        return tf.map_fn(one, (logits, sizes), fn_output_signature=tf.string)

    ds = tf.data.Dataset.from_tensor_slices([str(p) for p in image_paths])
    ds = ds.map(_decode_for_network, num_parallel_calls=parallel_reads or tf.data.AUTOTUNE,
                deterministic=True).ignore_errors()
    ds = ds.batch(batch_size).prefetch(2)
    for inputs, sizes, paths in ds:
        for path, png in zip(paths.numpy(), batch_pngs(inputs, sizes).numpy()):
            yield path.decode(), png


class DistilledSegmenter:
    """One crop at a time, as `segmenter.BodySegmenter`: uint8 RGB [H, W, 3] -> uint8 mask [H, W].

    For a few images (user-image paths); folders go through
    `writer.write_masks(..., segmenter="distilled")`, which batches.

    Args:
      weights_path: the weights file; None: the shipped one.
    """

    def __init__(self, weights_path: Optional[os.PathLike] = None) -> None:
        import tensorflow as tf

        self._net = load_mask_net(weights_path)
        self._masks = tf.function(lambda images: crop_masks(self._net, images),
                                  reduce_retracing=True)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an RGB image [H, W, 3], got shape {image.shape}")
        return self._masks(np.ascontiguousarray(image, np.uint8)[np.newaxis]).numpy()[0, ..., 0]


__all__ = ["INPUT_SIZE", "WEIGHTS_FILE", "PROVENANCE_FILE", "build_mask_net", "load_mask_net",
           "shipped_weights_path", "provenance", "network_input", "logits_to_size",
           "crop_masks", "mask_pngs", "DistilledSegmenter"]
