"""Embeddings of image files from an exported SavedModel (what mgcam-extract,
mgcam-search and mgcam-verify run).

Files are read by the evaluation pipeline (`mgcam_tf.data.pipeline.eval_dataset`:
decode, resize to 160x64, `preprocess`) and fed to the export's
`serving_rgbm` signature, so the features are those of `serving_default` on
the same pixels, and of the Keras model (tests/test_export.py).
"""

from __future__ import annotations

import hashlib
import os
import pathlib
from typing import Callable, Optional, Sequence

import numpy as np

from mgcam_tf.errors import ConfigError, DataError


class SavedModelEmbedder:
    """An export of `mgcam_tf.export`, loaded once.

    Args:
      export_path: a version folder, or the base folder (its latest version).

    Raises:
      ConfigError: no SavedModel there, or one without the mgcam signatures.
    """

    def __init__(self, export_path: os.PathLike):
        import tensorflow as tf

        from mgcam_tf import export

        self.export_dir = export.resolve_export(export_path)
        try:
            self._loaded = tf.saved_model.load(str(self.export_dir))
        except (OSError, ValueError, tf.errors.OpError) as err:
            raise ConfigError(f"{self.export_dir}: cannot load the SavedModel "
                              f"({str(err).splitlines()[0]})") from None
        if export.SIGNATURE_RGBM not in self._loaded.signatures:
            raise ConfigError(f"{self.export_dir}: no {export.SIGNATURE_RGBM} signature; "
                              "export the model with mgcam-export")
        self._rgbm = self._loaded.signatures[export.SIGNATURE_RGBM]
        self.metadata = export.read_metadata(self.export_dir)

    @property
    def fingerprint(self) -> str:
        """Identifies the export's weights (sha1 of its variables index and graph)."""
        digest = hashlib.sha1()
        for name in ("saved_model.pb", "variables/variables.index"):
            path = pathlib.Path(self.export_dir, name)
            if path.is_file():
                digest.update(path.read_bytes())
        return digest.hexdigest()

    def embed_rgbm(self, rgbm) -> np.ndarray:
        """float32 [B, D] embeddings of preprocessed rgbm [B, 160, 64, 4]."""
        return self._rgbm(rgbm=rgbm)["embedding"].numpy()

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

        from mgcam_tf.data import layouts, pipeline

        n = len(image_paths)
        if n == 0:
            raise DataError("no image to embed")
        split = layouts.Split(image_paths=tuple(map(str, image_paths)),
                              mask_paths=tuple(None if m is None else str(m) for m in mask_paths),
                              pids=np.zeros(n, np.int64), camids=np.zeros(n, np.int64))
        chunks, done = [], 0
        try:
            for batch in pipeline.eval_dataset(split, batch_size, mask_size_mismatch="resize"):
                chunks.append(self.embed_rgbm(batch["rgbm"]))
                done += len(chunks[-1])
                if progress is not None:
                    progress(done, n)
        except tf.errors.InvalidArgumentError as err:
            message = " ".join(err.message.split("\n")[0].split())
            raise DataError(message.replace("assertion failed: ", "")) from None
        return np.concatenate(chunks)
