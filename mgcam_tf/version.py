"""The package's version: the one place it is written.

setup.py reads it from this file's text (without importing the package, which
needs its dependencies) and `mgcam_tf.__version__` imports it.
"""

__version__ = "0.1.0"
