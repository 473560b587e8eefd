"""The one SavedModel loader: every tool that reads an export (mgcam-eval,
mgcam-extract, mgcam-search, mgcam-verify) goes through `SavedModelEmbedder`.

Files are read by the evaluation pipeline (`mgcam_tf.data.pipeline.eval_dataset`:
decode, resize to 160x64, `preprocess`) and fed to the export's
`serving_rgbm` signature, so the features are those of `serving_default` on
the same pixels, and of the Keras model (tests/test_export.py).
"""

from __future__ import annotations

import os
import re
from typing import Callable, Optional, Sequence

import numpy as np

from mgcam_tf.errors import ConfigError, DataError


def limits_of(metadata: dict):
    """The `ServingLimits` an export records (its defaults for exports made before)."""
    from mgcam_tf.serving.limits import ServingLimits

    recorded = metadata.get("limits")
    try:
        return ServingLimits(**recorded) if isinstance(recorded, dict) else ServingLimits()
    except (TypeError, ConfigError):
        return ServingLimits()


_HEAD_BYTES = 1 << 18    # where a JPEG's SOF marker lies, past any EXIF thumbnail


def refuse_oversized(paths: Sequence[str], limits) -> None:
    """DataError naming the first file whose header announces more than
    `limits.max_image_pixels` pixels, read before anything is decoded."""
    import tensorflow as tf

    from mgcam_tf.serving.limits import encoded_sizes

    def heads(names, whole=False):
        out = []
        for name in names:
            try:
                with open(name, "rb") as f:
                    out.append(f.read() if whole else f.read(_HEAD_BYTES))
            except OSError:
                out.append(b"")      # the reader names it
        return out

    for start in range(0, len(paths), 256):
        names = [str(p) for p in paths[start:start + 256]]
        try:
            sizes = encoded_sizes(tf.constant(heads(names))).numpy()
        except tf.errors.OpError:    # a JPEG header past the head, or a corrupt one
            sizes = []
            for name in names:
                try:
                    sizes.append(encoded_sizes(tf.constant(heads([name], True))).numpy()[0])
                except tf.errors.OpError:
                    sizes.append((0, 0))     # the decoder names it
        for name, (height, width) in zip(names, sizes):
            if int(height) * int(width) > limits.max_image_pixels:
                raise DataError(f"{name}: a {width}x{height} image ({int(height) * int(width)} "
                                f"pixels); the export takes at most {limits.max_image_pixels} "
                                "pixels an image (its max_image_pixels)")


def read_files(paths: Sequence[str], what: str = "image") -> list[bytes]:
    """The bytes of each file; DataError naming the one that cannot be read."""
    contents = []
    for path in paths:
        try:
            with open(path, "rb") as f:
                contents.append(f.read())
        except OSError as err:
            raise DataError(f"{path}: cannot read the {what} ({err.strerror})") from None
    return contents


def _decode_error(path: str, channels: int) -> Optional[str]:
    """Why `path` cannot be decoded as an image (None: it can)."""
    import tensorflow as tf

    try:
        tf.io.decode_image(tf.io.read_file(path), channels=channels, expand_animations=False)
    except (tf.errors.OpError, OSError) as err:
        lines = [ln.strip() for ln in getattr(err, "message", str(err)).splitlines()
                 if ln.strip() and not ln.strip().startswith("[[")]
        return lines[-1] if lines else type(err).__name__
    return None


def _raise_naming_the_file(err, image_paths: Sequence[str],
                           mask_paths: Sequence[Optional[str]]):
    """Raises DataError for a batch that failed in the graph, naming the file at fault.

    The graph's decoders report their node ("map/while/cond/DecodeJpeg"), not
    the element, so the files are decoded again one by one to find it; the
    graph's own message (a named assertion) is kept when none fails alone.
    """
    for path, mask in zip(image_paths, mask_paths):
        for name, channels, what in ((path, 3, "image"), (mask, 0, "mask")):
            if name and os.path.isfile(name):
                reason = _decode_error(str(name), channels)
                if reason is not None:
                    raise DataError(f"{name}: cannot decode the {what} ({reason})") from None
    found = re.search(r"assertion failed: \[(.*)\]", err.message)
    lines = [ln.strip() for ln in err.message.splitlines() if ln.strip()]
    message = found.group(1) if found else " ".join(err.message.split("\n")[0].split())
    raise DataError(message.replace("assertion failed: ", "") or
                    (lines[-1] if lines else str(err))) from None


class SavedModelEmbedder:
    """An export of `mgcam_tf.serving.export`, loaded once.

    Args:
      export_path: a version folder, or the base folder (its latest version).

    Raises:
      ConfigError: no SavedModel there, or one without the mgcam signatures.
    """

    def __init__(self, export_path: os.PathLike):
        import tensorflow as tf

        from mgcam_tf.serving import export

        self.export_dir = export.resolve_export(export_path)
        try:
            self._loaded = tf.saved_model.load(str(self.export_dir))
        except (OSError, ValueError, tf.errors.OpError) as err:
            raise ConfigError(f"{self.export_dir}: cannot load the SavedModel "
                              f"({str(err).splitlines()[0]})") from None
        self._rgbm, self._rgbm_input = self._rgbm_signature(tf)
        self.metadata = export.read_metadata(self.export_dir)
        # Exports made with the mask model in the graph (mgcam-export's default
        # when it is available) embed an image without a mask file.
        self._image_bytes = self._loaded.signatures.get(export.SIGNATURE_IMAGE_BYTES)
        # Files decoded here (embed_files) get the bound the export's
        # signatures apply in the graph: a decompression bomb as a query
        # must not take the command down either.
        self.limits = limits_of(self.metadata)

    @property
    def has_mask_in_graph(self) -> bool:
        """Whether the export makes masks itself (`serving_image_bytes`)."""
        return self._image_bytes is not None

    def _rgbm_signature(self, tf):
        """`serving_rgbm`, else any signature taking the preprocessed batch alone."""
        from mgcam_tf.serving import export

        names = sorted(self._loaded.signatures, key=lambda n: (n != export.SIGNATURE_RGBM, n))
        found = []
        for name in names:
            fn = self._loaded.signatures[name]
            _, inputs = fn.structured_input_signature
            found += [f"{name}({arg} {spec.dtype.name} {spec.shape})"
                      for arg, spec in inputs.items()]
            if len(inputs) == 1:
                (arg, spec), = inputs.items()
                if spec.dtype == tf.float32 and spec.shape.as_list()[1:] == [160, 64, 4]:
                    return fn, arg
        raise ConfigError(
            f"{self.export_dir}: no signature takes the preprocessed rgbm batch float32 "
            f"[N, 160, 64, 4] (found {', '.join(found) or 'no signature'}); export the "
            "model with mgcam-export")

    @property
    def fingerprint(self) -> str:
        """Identifies the export's weights (`export.export_fingerprint`)."""
        from mgcam_tf.serving import export

        return export.export_fingerprint(self.export_dir)

    def embed_rgbm(self, rgbm) -> np.ndarray:
        """float32 [B, D] embeddings of preprocessed rgbm [B, 160, 64, 4]."""
        return self({"rgbm": rgbm})["embedding"].numpy()

    def __call__(self, x: dict):
        """{"rgbm": [B, 160, 64, 4]} -> the signature's outputs (for
        `mgcam_tf.evaluation.features.extract_features`), in requests of at
        most the export's max_batch (a larger --batch_size is split, not refused)."""
        import tensorflow as tf

        rgbm, step = x["rgbm"], self.limits.max_batch
        if len(rgbm) <= step:
            return self._rgbm(**{self._rgbm_input: rgbm})
        parts = [self._rgbm(**{self._rgbm_input: rgbm[i:i + step]})
                 for i in range(0, len(rgbm), step)]
        return {key: tf.concat([part[key] for part in parts], 0) for key in parts[0]}

    def embed_files(self, image_paths: Sequence[str], mask_paths: Sequence[Optional[str]],
                    *, batch_size: int = 64,
                    progress: Optional[Callable[[int, int], None]] = None) -> np.ndarray:
        """float32 [N, D] embeddings of image files with their masks.

        Args:
          image_paths: N image files (JPEG/PNG/BMP/GIF, any size).
          mask_paths: N mask files, None for no mask (all body). A mask of
            another size than its image is resized on its own.
          progress: called with (images done, N).

        Raises:
          DataError: a file that cannot be read or decoded (named).
        """
        import tensorflow as tf

        from mgcam_tf.data import pipeline

        n = len(image_paths)
        if n == 0:
            raise DataError("no image to embed")
        refuse_oversized([*image_paths, *(m for m in mask_paths if m)], self.limits)
        chunks, done = [], 0
        try:
            for rgbm in pipeline.file_batches(image_paths, mask_paths, batch_size):
                chunks.append(self.embed_rgbm(rgbm))
                done += len(chunks[-1])
                if progress is not None:
                    progress(done, n)
        except tf.errors.InvalidArgumentError as err:
            _raise_naming_the_file(err, image_paths, mask_paths)
        return np.concatenate(chunks)

    def embed_image_files(self, image_paths: Sequence[str], *, batch_size: int = 64,
                          progress: Optional[Callable[[int, int], None]] = None) -> np.ndarray:
        """float32 [N, D] embeddings of image files alone: the export makes each
        mask (the mask recipe in the graph, `serving_image_bytes`).

        Raises:
          ConfigError: the export has no mask in its graph (re-export with
            mgcam-export, the mask model available, or pass masks).
          DataError: a file that cannot be read or decoded (named).
        """
        import tensorflow as tf

        from mgcam_tf.serving import export

        if self._image_bytes is None:
            raise ConfigError(f"{self.export_dir}: the export has no {export.SIGNATURE_IMAGE_BYTES} "
                              "signature (exported with --mask_in_graph=false or without the "
                              "mask model); give masks, or export again with the mask model")
        n = len(image_paths)
        if n == 0:
            raise DataError("no image to embed")
        chunks = []
        for start in range(0, n, max(1, int(batch_size))):
            paths = [str(p) for p in image_paths[start:start + batch_size]]
            contents = read_files(paths)
            try:
                out = self._image_bytes(**{export.INPUT_IMAGE_BYTES: tf.constant(contents)})
            except tf.errors.InvalidArgumentError as err:
                # Eager errors start with "Graph execution error:" and the
                # node's traceback; the graph's own message is the useful part.
                found = re.search(r"assertion failed: \[(.*)\]", err.message)
                lines = [ln.strip() for ln in err.message.splitlines() if ln.strip()]
                message = found.group(1) if found else (lines[-1] if lines else str(err))
                # The graph names the element ("image_bytes[3]"); name the file.
                named = message
                for k, path in enumerate(paths):
                    named = named.replace(f"{export.INPUT_IMAGE_BYTES}[{k}]", path)
                if named == message:     # a decoder's error names no element: find it
                    _raise_naming_the_file(err, paths, [None] * len(paths))
                raise DataError(named) from None
            chunks.append(out[export.OUTPUT_EMBEDDING].numpy())
            if progress is not None:
                progress(start + len(paths), n)
        return np.concatenate(chunks)

    def embed_images(self, image_paths: Sequence[str], mask_paths: Sequence[Optional[str]],
                     *, batch_size: int = 64) -> np.ndarray:
        """`embed_files`, except that images whose mask is
        `conventions.MASK_IN_GRAPH` go through `embed_image_files`."""
        from mgcam_tf.conventions import MASK_IN_GRAPH

        in_graph = [i for i, m in enumerate(mask_paths) if m == MASK_IN_GRAPH]
        files = [i for i, m in enumerate(mask_paths) if m != MASK_IN_GRAPH]
        parts = {}
        if in_graph:
            feats = self.embed_image_files([image_paths[i] for i in in_graph],
                                           batch_size=batch_size)
            parts.update(zip(in_graph, feats))
        if files:
            feats = self.embed_files([image_paths[i] for i in files],
                                     [mask_paths[i] for i in files], batch_size=batch_size)
            parts.update(zip(files, feats))
        if not parts:
            raise DataError("no image to embed")
        return np.stack([parts[i] for i in range(len(image_paths))])
