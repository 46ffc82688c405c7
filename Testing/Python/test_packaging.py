"""The installable package lists every HLIPCore sub-package and ships the Resources folder."""
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(sys.version_info < (3, 11), reason="tomllib")
def test_pyproject_lists_every_subpackage():
    import tomllib
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "HLIPCore").rglob("__init__.py")
               if "__pycache__" not in p.parts}
    assert on_disk <= listed, f"add to pyproject.toml packages: {sorted(on_disk - listed)}"
    assert "HLIPCore._resources" in listed


def test_no_slicer_or_qt_import_in_hlipcore():
    offenders = []
    for path in (ROOT / "HLIPCore").rglob("*.py"):
        for line in path.read_text().splitlines():
            words = line.strip().split()
            if len(words) >= 2 and words[0] in ("import", "from") and \
                    words[1].split(".")[0] in ("slicer", "qt", "ctk", "vtk", "PySide6", "Qt", "PyQt5"):
                offenders.append(f"{path.relative_to(ROOT)}: {line.strip()}")
    assert not offenders, offenders
