"""Where the project's data files live, in a source checkout and in an installed package."""
import os
from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


def resources_dir() -> Path:
    """The `Resources/` folder: prompt sets, model catalog, bundled demo model.

    `HLIP_RESOURCES` overrides it; otherwise the checkout's top-level `Resources/` (editable installs and the
    Slicer module, which ships HLIPCore next to it), else the copy installed inside the package.
    """
    env = os.environ.get("HLIP_RESOURCES")
    if env:
        return Path(env)
    for candidate in (_PACKAGE_DIR.parent / "Resources", _PACKAGE_DIR / "_resources"):
        if candidate.is_dir():
            return candidate
    return _PACKAGE_DIR.parent / "Resources"


def cache_dir() -> Path:
    """Per-user cache for downloaded models and text-embedding caches (`HLIP_CACHE` overrides)."""
    env = os.environ.get("HLIP_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "hlip"
