"""Trained models shipped inside the package, to start from without training.

A preset is a folder `mgcam_tf/presets/<NAME>/` laid out as a model
directory (`config.json`, `checkpoints/` with the weights alone, no optimizer
state), plus `preset.json`: what it is, the data it was trained on and under
which terms, the command that made it and the evaluation figures it reaches
(written by tools/make_preset.py). Every command that takes --model_dir or
--saved_model takes --preset=NAME; in Python:

    model = mgcam_tf.load_preset("mgcam_siamese_cuhk03")     # a Keras model
    h = model.embed(rgbm)                                     # [N, 128]
"""

from __future__ import annotations

import json
import os
import pathlib

from mgcam_tf.errors import ConfigError

PRESET_FILE = "preset.json"
_ROOT = pathlib.Path(__file__).resolve().parent


def list_presets() -> list[str]:
    """Names of the presets this installation ships."""
    return sorted(p.name for p in _ROOT.iterdir() if (p / PRESET_FILE).is_file())


def preset_dir(name: str) -> pathlib.Path:
    """The model directory of preset `name` (usable as --model_dir)."""
    folder = _ROOT / name
    if not (folder / PRESET_FILE).is_file():
        raise ConfigError(f"--preset={name}: no such preset; this installation has "
                          f"{', '.join(list_presets()) or 'none'}")
    return folder


def model_dir_or_preset(value: os.PathLike | str) -> pathlib.Path:
    """A model directory named by its folder or by a preset's name.

    `mgcam-train --init_from=mgcam_siamese_cuhk03` fine-tunes the preset; an
    existing folder of that name wins over the preset, and a value that is
    neither is returned as it is, for the model-directory checks to name.
    """
    folder = pathlib.Path(value)
    if not folder.exists() and str(value) in list_presets():
        return preset_dir(str(value))
    return folder


def preset_info(name: str) -> dict:
    """The preset's `preset.json`: description, data, terms, command, evaluation."""
    return json.loads((preset_dir(name) / PRESET_FILE).read_text())


def load_preset(name: str):
    """The preset's Keras model (MGCAM or MSCANBody) with its trained weights."""
    from mgcam_tf.training import run_dir

    return run_dir.load_trained_model(preset_dir(name))


def export_preset(name: str, export_base=None, **export_args):
    """A TF Serving export of the preset (`mgcam_tf.serving.export.export_model_dir`).

    export_base: where to write; default a per-user cache folder
    (`$MGCAM_CACHE_DIR/presets/<name>`, kept across calls: the export of a
    preset is made once and reused by mgcam-search, -extract and -verify).
    Returns the export's version folder.
    """
    import hashlib

    from mgcam_tf.errors import DataError
    from mgcam_tf.segmentation import choice, model_file
    from mgcam_tf.serving import export

    folder = preset_dir(name)
    # The image-only signatures' mask network: --segmenter's choice where the caller
    # gives one, else $MGCAM_SEGMENTER's, else the default (segmentation.choice).
    segmenter = choice.resolve(export_args.pop("segmenter", None))
    if export_base is None:
        # Keyed by the weights and the mask network, so an upgraded preset, or another
        # segmenter, is exported anew.
        digest = hashlib.sha256(segmenter.encode())
        for index in sorted((folder / "checkpoints").glob("*.index")):
            digest.update(index.read_bytes())
        export_base = model_file.default_cache_dir() / "presets" / f"{name}-{digest.hexdigest()[:12]}"
        if pathlib.Path(export_base).is_dir():
            try:
                return export.resolve_export(export_base)
            except ConfigError:
                pass
    if "mask_model_path" not in export_args:
        if segmenter == choice.DISTILLED:
            from mgcam_tf.segmentation import distilled

            export_args["mask_model_path"] = distilled.shipped_weights_path()
        else:
            try:  # the mask in the graph when the BlazePose file can be had
                export_args["mask_model_path"] = model_file.resolve_model_path()
            except (ConfigError, DataError):
                export_args["mask_model_path"] = None
    export_args.setdefault("metadata", {"preset": preset_info(name)})
    return export.export_model_dir(folder, export_base, segmenter=segmenter, **export_args)
