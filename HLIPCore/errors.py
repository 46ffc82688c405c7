"""Exceptions whose message is meant for the user: one line naming the file or item and the problem.

The CLI prints them without a traceback; the Slicer module shows them in a message box.
"""


class HLIPError(Exception):
    """Base class of every error that carries a user-facing message."""


class InputError(HLIPError):
    """A study, image file or manifest cannot be used (missing, corrupt, 2D, mixed geometry, ...)."""


class CheckpointError(HLIPError):
    """A checkpoint cannot be read, or does not fit the model configuration."""


class ConfigError(HLIPError):
    """A model configuration, prompt set or training configuration is invalid."""
