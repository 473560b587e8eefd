"""mgcam-tf: Mask-guided Contrastive Attention Model for person re-identification (TF2 / Keras 3)."""

import pathlib
import re

from setuptools import find_packages, setup

HERE = pathlib.Path(__file__).parent
# The version is written once, in mgcam_tf/version.py; read as text, since
# importing the package would need its dependencies installed first.
VERSION = re.search(r'^__version__ = "([^"]+)"$',
                    (HERE / "mgcam_tf" / "version.py").read_text(encoding="utf-8"),
                    re.MULTILINE).group(1)

# TensorFlow comes in through an extra so that a GPU machine is not handed the
# CPU wheel (both provide the `tensorflow` module and would clash):
#   pip install -e .[cpu]      this project's CI and CPU machines
#   pip install -e .[gpu]      CUDA machines (tensorflow[and-cuda])
TENSORFLOW = "2.21.0"

ONNX = ["tf2onnx==1.17.0", "onnx>=1.14", "onnxruntime>=1.17"]

setup(
    name="mgcam-tf",
    version=VERSION,
    description="MGCAM person re-identification (Song et al., CVPR 2018) in TensorFlow 2 / Keras 3",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10,<3.14",
    packages=find_packages(include=["mgcam_tf", "mgcam_tf.*"]),
    # The shipped models (mgcam_tf/presets/<NAME>/: preset.json, config.json,
    # checkpoints/) are data, not modules: without this a wheel or a plain
    # `pip install .` holds the preset code but none of its files.
    # The distilled mask network's weights and provenance likewise.
    package_data={"mgcam_tf.presets": ["*/preset.json", "*/config.json", "*/checkpoints/*"],
                  "mgcam_tf.segmentation": ["*.weights.h5", "*.json"]},
    install_requires=[
        "keras>=3.15,<3.16",
        "numpy>=1.26,<3",
        "scipy>=1.13,<2",
        "absl-py>=2.1,<3",
        # TF 2.21 no longer pulls tensorboard in; it needs protobuf >= 6.31.1, < 8.
        "tensorboard>=2.21,<2.22",
        "protobuf>=6.31.1,<8",
    ],
    extras_require={
        "cpu": [f"tensorflow-cpu=={TENSORFLOW}"],
        "gpu": [f"tensorflow[and-cuda]=={TENSORFLOW}"],
        # tensorflow-serving-api declares a dependency on the full `tensorflow`
        # wheel, which would clash with tensorflow-cpu: install it separately with
        #   pip install --no-deps tensorflow-serving-api==2.21.0
        "serving": ["grpcio>=1.60,<2"],
        # The persistent gallery index (mgcam_tf/retrieval/index.py); faiss-cpu
        # 1.15 has numpy 2.x wheels.
        "index": ["faiss-cpu>=1.9,<2"],
        # mgcam-export --format=onnx: tf2onnx 1.17.0 (the latest) converts the
        # embedding under TF 2.21 and leaves protobuf and numpy as they are;
        # onnxruntime runs the file (and its test).
        "onnx": ONNX,
        # The ONNX export is tested in CI too: the three leave the rest as it is.
        # setuptools and wheel: tests/presets/test_wheel.py builds the wheel
        # without build isolation (no network), with the venv's own.
        "test": ["pytest>=8,<10", "grpcio>=1.60,<2", "faiss-cpu>=1.9,<2", *ONNX,
                 "setuptools>=64", "wheel"],
        # mgcam-extract --backend=beam. apache-beam 2.77 caps protobuf below 7
        # and tensorflow 2.21 needs >= 6.31.1: tested together (tensorflow-cpu
        # 2.21.0, tensorboard 2.21.0, tensorflow-serving-api 2.21.0 --no-deps,
        # apache-beam 2.77.0, protobuf 6.33.6, grpcio 1.85.3) with
        # tests/retrieval/test_distributed_extraction.py and tests/serving/test_export.py.
        "beam": ["apache-beam>=2.77,<2.78", "protobuf>=6.31.1,<7"],
        # Baselines of benchmarks/ only: the per-image OpenCV loop of the
        # official data layer, and the PyTorch twin of the training step.
        "bench": ["opencv-python-headless>=4.9", "torch==2.13.0"],
    },
    entry_points={
        "console_scripts": [
            "mgcam-train=mgcam_tf.cli.train:run",
            "mgcam-eval=mgcam_tf.cli.evaluate:run",
            "mgcam-masks=mgcam_tf.cli.make_masks:run",
            "mgcam-export=mgcam_tf.cli.export:run",
            "mgcam-extract=mgcam_tf.cli.extract:run",
            "mgcam-search=mgcam_tf.cli.search:run",
            "mgcam-verify=mgcam_tf.cli.verify:run",
            "mgcam-attention=mgcam_tf.cli.attention:run",
            "mgcam-serving-client=mgcam_tf.cli.serving_client:run",
        ],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Image Recognition",
    ],
)
