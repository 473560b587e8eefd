"""mgcam-tf: Mask-guided Contrastive Attention Model for person re-identification (TF2 / Keras 3)."""

import pathlib

from setuptools import find_packages, setup

HERE = pathlib.Path(__file__).parent

# TensorFlow comes in through an extra so that a GPU machine is not handed the
# CPU wheel (both provide the `tensorflow` module and would clash):
#   pip install -e .[cpu]      this project's CI and CPU machines
#   pip install -e .[gpu]      CUDA machines (tensorflow[and-cuda])
TENSORFLOW = "2.21.0"

setup(
    name="mgcam-tf",
    version="0.1.0",
    description="MGCAM person re-identification (Song et al., CVPR 2018) in TensorFlow 2 / Keras 3",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10,<3.14",
    packages=find_packages(include=["mgcam_tf", "mgcam_tf.*"]),
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
        "test": ["pytest>=8,<10"],
    },
    entry_points={
        "console_scripts": [
            "mgcam-train=mgcam_tf.cli.train:run",
        ],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Image Recognition",
    ],
)
