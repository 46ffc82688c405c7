"""HLIPCore: hierarchical language-image pre-training for raw 3D CT/MRI studies.

No Slicer or Qt import anywhere in this package: it runs in plain Python, in the Slicer module's worker
process and in batch jobs alike.
"""
__version__ = "0.1.0"

from .errors import HLIPError, InputError, CheckpointError, ConfigError  # noqa: F401
