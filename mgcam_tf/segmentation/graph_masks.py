"""The mask step of the export's image-only signatures, for either segmenter, in TF ops.

`mgcam_tf.serving.export` makes masks in the graph through one of these
objects, whichever segmenter was chosen (`choice`):

- `crop_masks(images)`: uint8 RGB [N, H, W, 3] of one size -> uint8 0/255
  masks [N, H, W, 1];
- for batches of files of different sizes, in three steps:
  `network_input(data, pixels)` per file (a fixed-size tensor,
  `input_spec`, and the int32 [6] geometry to map back), `network(inputs)`
  once on the batch, and `mask_of(logits, geometry)` per file -> uint8
  [H, W, 1];
- `variables` to track in the SavedModel and `metadata` for
  `mgcam_export.json`.
"""

from __future__ import annotations

import hashlib
import os
import pathlib

import tensorflow as tf

from mgcam_tf.segmentation import choice, graph_recipe


class BlazePoseGraphMasks:
    """BlazePose-full's recipe (`graph_recipe` + `blazepose_graph`): masks equal to
    `segmenter.BodySegmenter`'s but for a few boundary pixels."""

    def __init__(self, model_path: os.PathLike) -> None:
        from mgcam_tf.segmentation import blazepose_graph, model_file

        self.network = blazepose_graph.SegmentationNetwork(model_path)
        self.variables = list(self.network.weights.values())
        self.input_spec = tf.TensorSpec([graph_recipe.INPUT_SIZE, graph_recipe.INPUT_SIZE, 3],
                                        tf.float32)
        self.metadata = {"segmenter": choice.BLAZEPOSE, "model": model_file.MODEL_FILENAME,
                         "source": model_file.MEDIAPIPE_REQUIREMENT,
                         "sha256": model_file.MODEL_SHA256}

    def crop_masks(self, images: tf.Tensor, network=None) -> tf.Tensor:
        """network: a stand-in for `self.network` (the export runs it in bounded chunks)."""
        return graph_recipe.crop_masks(network or self.network, images)

    def network_input(self, data: tf.Tensor, pixels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        # The recipe's decoder (accurate IDCT) for JPEG; other formats as decoded.
        is_jpeg = tf.equal(tf.strings.substr(data, 0, 3), b"\xff\xd8\xff")
        crop = tf.cond(is_jpeg, lambda: graph_recipe.decode_crop(data), lambda: pixels)
        canvas, geometry = graph_recipe.letterbox_canvas(crop[tf.newaxis])
        size = tf.shape(crop)[:2]
        return canvas[0], tf.concat([size, tf.stack(geometry)], 0)

    def mask_of(self, logits: tf.Tensor, g: tf.Tensor) -> tf.Tensor:
        return graph_recipe.binary_mask(graph_recipe.logits_to_crop(
            logits[tf.newaxis], (g[2], g[3], g[4], g[5]), g[0], g[1]))[0]


class DistilledGraphMasks:
    """The distilled network (`distilled`) on the crop resized to 160x64."""

    def __init__(self, weights_path: os.PathLike | None = None) -> None:
        from mgcam_tf.segmentation import distilled

        self._distilled = distilled
        path = pathlib.Path(weights_path) if weights_path else distilled.shipped_weights_path()
        self._net = distilled.load_mask_net(path)
        self.variables = list(self._net.weights)
        self.input_spec = tf.TensorSpec([*distilled.INPUT_SIZE, 3], tf.float32)
        self.metadata = {"segmenter": choice.DISTILLED, "model": distilled.WEIGHTS_FILE,
                         "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}

    def network(self, inputs: tf.Tensor) -> tf.Tensor:
        return self._net(inputs, training=False)

    def crop_masks(self, images: tf.Tensor, network=None) -> tf.Tensor:
        """network: accepted for the same call as BlazePose's; the distilled network is
        small enough to run on a whole bounded batch at once."""
        del network
        return self._distilled.crop_masks(self._net, images)

    def network_input(self, data: tf.Tensor, pixels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        # The pixels the embedding is computed from: no second decode.
        del data
        size = tf.shape(pixels)[:2]
        return (self._distilled.network_input(pixels[tf.newaxis])[0],
                tf.concat([size, tf.zeros([4], tf.int32)], 0))

    def mask_of(self, logits: tf.Tensor, g: tf.Tensor) -> tf.Tensor:
        return graph_recipe.binary_mask(self._distilled.logits_to_size(
            logits[tf.newaxis], g[0], g[1]))[0]


def graph_masks(segmenter: str | None, model_path: os.PathLike | None):
    """The mask maker of `segmenter` (`choice.SEGMENTERS`; None: `choice.for_model_file`)
    with its model file.

    Raises:
      ConfigError: an unknown segmenter. DataError: an unreadable model file.
    """
    if choice.for_model_file(segmenter, model_path) == choice.DISTILLED:
        return DistilledGraphMasks(model_path)
    return BlazePoseGraphMasks(model_path)


__all__ = ["BlazePoseGraphMasks", "DistilledGraphMasks", "graph_masks"]
