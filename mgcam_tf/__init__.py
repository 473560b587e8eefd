"""mgcam_tf: Mask-guided Contrastive Attention Model (Song et al., CVPR 2018) for TF2/Keras 3."""

__version__ = "0.1.0"
