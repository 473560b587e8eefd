"""mgcam_tf: Mask-guided Contrastive Attention Model (Song et al., CVPR 2018) for TF2/Keras 3.

The names a library user needs, importable from the package itself:

    import mgcam_tf
    model = mgcam_tf.build_model(num_ids=751)                  # MGCAM, RGB-M input
    data = mgcam_tf.load_dataset("/data/Market-1501")
    evaluator = mgcam_tf.ReidEvaluator("euclidean")

They are loaded on first use (PEP 562), so that `import mgcam_tf.conventions`
or a command's --help does not pay for TensorFlow. docs/ARCHITECTURE.md maps
every package.
"""

from __future__ import annotations

import importlib
import os

# oneDNN's CPU kernels: the fused convolution + bias path of modeling/layers.py
# that docs/PERFORMANCE.md measures, and the only CPU kernels with a dilated
# Conv2D gradient. TF turns them on by itself only on CPUs with AVX512/AMX;
# on AVX2-only CPUs (AMD EPYC, older Intel) the layers fall back to
# space-to-batch when TF was loaded without them. It only takes effect when
# set before TensorFlow is imported; a user's own setting wins.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

from mgcam_tf.version import __version__  # noqa: E402 (after the oneDNN setting)

# public name -> module that defines it
_EXPORTS = {
    # the network (mgcam_tf.modeling)
    "MGCAM": "mgcam_tf.modeling.models",
    "MSCANBody": "mgcam_tf.modeling.models",
    "build_model": "mgcam_tf.modeling.models",
    "model_config": "mgcam_tf.modeling.models",
    "model_from_config": "mgcam_tf.modeling.models",
    "MultiScaleContext": "mgcam_tf.modeling.layers",
    "ContrastiveAttention": "mgcam_tf.modeling.layers",
    "MGCAMObjective": "mgcam_tf.modeling.objective",
    "identity_loss": "mgcam_tf.modeling.losses",
    "attention_loss": "mgcam_tf.modeling.losses",
    "region_triplet_loss": "mgcam_tf.modeling.losses",
    "siamese_loss": "mgcam_tf.modeling.losses",
    # training (mgcam_tf.training)
    "TrainingTask": "mgcam_tf.training.task",
    "train": "mgcam_tf.training.trainer",
    "load_trained_model": "mgcam_tf.training.run_dir",
    # data (mgcam_tf.data)
    "load_dataset": "mgcam_tf.data.layouts",
    "register_layout": "mgcam_tf.data.layouts",
    "preprocess": "mgcam_tf.data.preprocess",
    # evaluation (mgcam_tf.evaluation)
    "ReidEvaluator": "mgcam_tf.evaluation.evaluator",
    "split_features": "mgcam_tf.evaluation.features",
    # deployment (mgcam_tf.serving)
    "export_saved_model": "mgcam_tf.serving.export",
    "export_model_dir": "mgcam_tf.serving.export",
    "SavedModelEmbedder": "mgcam_tf.serving.loader",
    # retrieval (mgcam_tf.retrieval)
    "FeatureExtractor": "mgcam_tf.retrieval.feature_extractor",
    # shipped models (mgcam_tf.presets)
    "load_preset": "mgcam_tf.presets",
    "list_presets": "mgcam_tf.presets",
    # errors
    "MgcamError": "mgcam_tf.errors",
    "ConfigError": "mgcam_tf.errors",
    "DataError": "mgcam_tf.errors",
    "OutputError": "mgcam_tf.errors",
    "TrainingError": "mgcam_tf.errors",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'mgcam_tf' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
