"""Training HLIP models (contrastive CLIP/SigLIP on study-report pairs) and zero-shot evaluation.

`TrainConfig`/`load_config` (config.py), the `Trainer` (loop.py), manifest reading and the preprocessed-study cache
(dataset.py), optimiser and schedule (optim.py), metrics (metrics.py), evaluation (evaluate.py) and WordPiece
vocabularies (vocab.py). No Slicer imports: `hlip train` / `hlip eval` and Slicer use the same code.
"""
from .config import TrainConfig, load_config
from .dataset import ManifestEntry, StudyCache, read_manifest

__all__ = ["TrainConfig", "load_config", "ManifestEntry", "StudyCache", "read_manifest", "Trainer"]


def __getattr__(name):  # the heavy parts load on first use
    if name == "Trainer":
        from .loop import Trainer
        return Trainer
    raise AttributeError(name)
