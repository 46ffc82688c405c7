"""First-use installation: torch from the PyTorch extension, the rest from Resources/requirements.txt.

Never called at import time and never off the main thread; every install happens only after the user confirms.
The Slicer-facing calls go through `Installer`, so tests can check the decisions without installing anything.
"""
import importlib.metadata
import importlib.util
import re
import threading
from dataclasses import dataclass
from typing import Callable, List, Optional

from . import module_resource

REQUIREMENTS = module_resource("requirements.txt")
TORCH_REQUIREMENT = ">=2.1"


class DependencyError(Exception):
    """A dependency is missing and was not installed; the message says what the user should do."""


def read_requirements(path=REQUIREMENTS) -> List[str]:
    lines = [line.split("#", 1)[0].strip() for line in open(path, encoding="utf-8")]
    return [line for line in lines if line]


def _name_and_minimum(req: str):
    match = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*(?:>=\s*([0-9][0-9.]*))?", req)
    return match.group(1), match.group(2)


def _version_tuple(text: str):
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3])


def is_satisfied(req: str) -> bool:
    name, minimum = _name_and_minimum(req)
    try:
        installed = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return minimum is None or _version_tuple(installed) >= _version_tuple(minimum)


def missing_requirements(path=REQUIREMENTS) -> List[str]:
    return [req for req in read_requirements(path) if not is_satisfied(req)]


def torch_available() -> bool:
    return importlib.util.find_spec("torch") is not None


def gpu_memory_gb() -> Optional[float]:
    """Total memory of the first CUDA GPU in GiB, None without torch or a GPU (torch is imported lazily)."""
    if not torch_available():
        return None
    import torch
    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_properties(0).total_memory / 2 ** 30


# Rough need for one ViT-B study with gradient-weighted maps at the catalog's default depth (measured peaks are
# about 4-6 GiB in fp32); below this a warning suggests bf16 or the CPU.
GPU_MEMORY_WARNING_GB = 8.0


def device_warning(device: str, precision: str = "fp32", memory_gb: Optional[float] = None) -> str:
    """'' or a one-line warning for the chosen device."""
    if device == "cpu":
        return ""
    memory = gpu_memory_gb() if memory_gb is None else memory_gb
    if memory is None:
        return "" if device == "auto" else "No CUDA GPU is available to PyTorch here: the CPU will be used (slower)."
    need = GPU_MEMORY_WARNING_GB / (2 if precision == "bf16" else 1)
    if memory < need:
        return (f"The GPU has {memory:.1f} GiB of memory; about {need:.0f} GiB may be needed. Choose bf16 "
                "precision or the CPU if the analysis runs out of memory.")
    return ""


@dataclass
class Installer:
    """How dependencies are installed; the defaults use Slicer. `confirm(text) -> bool` asks the user."""
    confirm: Callable[[str], bool]
    install_torch: Optional[Callable[[], bool]] = None
    pip_install: Optional[Callable[[List[str]], None]] = None


def slicer_installer(confirm: Callable[[str], bool]) -> Installer:
    def install_torch():
        try:
            import PyTorchUtils  # the SlicerPyTorch extension
        except ImportError:
            raise DependencyError("This module needs PyTorch: install the 'PyTorch' extension from the Extension "
                                  "Manager, restart Slicer and try again.") from None
        torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=True,
                                                              torchVersionRequirement=TORCH_REQUIREMENT)
        return torch is not None

    def pip_install(requirements):
        import slicer
        packaging = getattr(slicer, "packaging", None)
        if packaging is None:
            try:
                import slicer.packaging as packaging  # noqa: F811
            except ImportError:
                packaging = None
        if packaging is not None and hasattr(packaging, "pip_ensure"):  # Slicer >= 5.12: asks, shows progress
            packaging.pip_ensure(requirements, requester="HLIP")
        else:
            if not confirm("HLIP needs these Python packages, which are not installed yet:\n\n"
                           + "\n".join(requirements) + "\n\nInstall them now? (This can take a few minutes.)"):
                raise DependencyError("The required Python packages were not installed.")
            slicer.util.pip_install(requirements)
    return Installer(confirm=confirm, install_torch=install_torch, pip_install=pip_install)


def ensure(installer: Installer, requirements_file=REQUIREMENTS) -> None:
    """Make torch and the requirements importable, or raise DependencyError with what to do."""
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("dependencies can only be installed from the main thread")
    if not torch_available():
        ok = False
        if installer.install_torch is not None:
            try:
                ok = installer.install_torch()
            except DependencyError:
                raise
            except Exception as exc:  # noqa: BLE001
                raise DependencyError(f"Installing PyTorch failed ({exc}). Install it with the PyTorch Utils module "
                                      "and restart Slicer.") from exc
        if not ok or not torch_available():
            raise DependencyError("PyTorch is not installed. Open the 'PyTorch Utils' module (PyTorch extension), "
                                  "install PyTorch, restart Slicer and try again.")
    missing = missing_requirements(requirements_file)
    if not missing:
        return
    if installer.pip_install is None:
        raise DependencyError("Missing Python packages: " + ", ".join(missing))
    try:
        installer.pip_install(missing)
    except DependencyError:
        raise
    except Exception as exc:  # noqa: BLE001 - network, permissions, conflicts
        raise DependencyError(f"Installing {', '.join(missing)} failed ({type(exc).__name__}: {exc}). Check the "
                              "network connection (or a proxy), then try again; the error log has pip's output.") \
            from exc
    still = missing_requirements(requirements_file)
    if still:
        raise DependencyError("These packages are still missing after installation: " + ", ".join(still)
                              + ". Restart Slicer and try again.")
