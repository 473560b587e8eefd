"""Exceptions the library raises for problems a user can fix.

The command-line layer catches `MgcamError` and prints its message as one
line, so every message must name the file, folder, flag or field at fault.
"""


class MgcamError(Exception):
    """Base class of every user-facing error of mgcam_tf."""


class ConfigError(MgcamError, ValueError):
    """An option or combination of options that cannot work."""


class DataError(MgcamError, ValueError):
    """A data set, image or mask that cannot be read as asked."""


class TrainingError(MgcamError, RuntimeError):
    """Training cannot go on (for example the loss became NaN)."""


class OutputError(MgcamError, OSError):
    """An output (checkpoint, mask, features, report, export) cannot be written."""
