"""A headless 3D Slicer MRML application for tests, built from the `slicer-core` wheel (no Slicer binary).

`SlicerApp` wires what the HLIP module touches the way Slicer's application does: a scene with a crosshair node,
the application logic, colour logic (module "Colors"), volumes logic ("Volumes"), subject hierarchy logic, a
cache and data I/O manager (for .mrb), and Red/Yellow/Green slice logics with their slice and composite nodes.
`slicer.mrmlScene` points at the scene. What is NOT here: `slicer.app`, Qt/ctk widgets, layout manager, 3D views,
subject hierarchy plugins (items are made by the module itself when missing).

Fixtures: `mrml_app` (a fresh app and scene per test), `slicer_module` (imports HLIPSlicer.py).
Helpers: `render_slice_view(app, "Red", png)` writes the slice logic's blended image (background + foreground).
"""
import os
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
ROOT = Path(__file__).resolve().parents[2]
MODULE_DIR = ROOT / "HLIPSlicer"
ARTIFACTS = ROOT / "Testing" / "artifacts"
for p in (str(ROOT), str(MODULE_DIR)):
    if p not in sys.path:
        sys.path.insert(0, p)

import slicer  # noqa: E402  (slicer-core)
import vtk  # noqa: E402

VIEWS = (("Red", "Axial"), ("Yellow", "Sagittal"), ("Green", "Coronal"))


class SlicerApp:
    def __init__(self):
        scene = slicer.vtkMRMLScene()
        crosshair = slicer.vtkMRMLCrosshairNode()
        crosshair.SetSingletonTag("default")
        scene.AddNode(crosshair)
        app = slicer.vtkSlicerApplicationLogic()
        app.SetMRMLScene(scene)
        color = slicer.vtkSlicerColorLogic()
        color.SetMRMLApplicationLogic(app)
        color.SetMRMLScene(scene)
        app.SetColorLogic(color)
        app.SetModuleLogic("Colors", color)
        app.SetSliceLogics(vtk.vtkCollection())
        app.SetViewLogics(vtk.vtkCollection())
        slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene, True)
        cache = slicer.vtkCacheManager()
        cache.SetMRMLScene(scene)
        scene.SetCacheManager(cache)
        dio = slicer.vtkDataIOManager()
        dio.SetCacheManager(cache)
        scene.SetDataIOManager(dio)
        volumes = slicer.vtkSlicerVolumesLogic()
        volumes.SetMRMLApplicationLogic(app)
        volumes.SetMRMLScene(scene)
        app.SetModuleLogic("Volumes", volumes)
        sh = slicer.vtkSlicerSubjectHierarchyModuleLogic()
        sh.SetMRMLApplicationLogic(app)
        sh.SetMRMLScene(scene)
        app.SetModuleLogic("SubjectHierarchy", sh)
        self.slice_logics = {}
        for name, orientation in VIEWS:
            logic = slicer.vtkMRMLSliceLogic()
            logic.SetMRMLApplicationLogic(app)
            logic.SetMRMLScene(scene)
            node = logic.AddSliceNode(name)
            node.SetOrientation(orientation)
            app.GetSliceLogics().AddItem(logic)
            self.slice_logics[name] = logic
        self.scene, self.app_logic, self._keep = scene, app, (color, volumes, sh, cache, dio)
        slicer.mrmlScene = scene

    def composite(self, view: str):
        return self.slice_logics[view].GetSliceCompositeNode()

    def close(self):
        self.scene.Clear(True)


@pytest.fixture
def mrml_app():
    app = SlicerApp()
    yield app
    app.close()


@pytest.fixture(scope="session")
def slicer_module():
    import HLIPSlicer
    return HLIPSlicer


def render_slice_view(app: SlicerApp, view: str, png: Path, ras_center=None, fov_mm: float = 200.0,
                      size: int = 256) -> np.ndarray:
    """The slice view's blended image (what Slicer draws before annotations) as (rows, cols, RGBA) uint8, also
    written to `png`. `ras_center` moves the slice through that point."""
    logic = app.slice_logics[view]
    node = logic.GetSliceNode()
    node.SetDimensions(size, size, 1)
    node.SetFieldOfView(fov_mm, fov_mm, 1.0)
    if ras_center is not None:
        node.JumpSliceByCentering(*[float(v) for v in ras_center])
    node.UpdateMatrices()
    producer = logic.GetImageDataConnection().GetProducer()
    producer.Update()
    image = producer.GetOutputDataObject(0)
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    writer = vtk.vtkPNGWriter()
    writer.SetFileName(str(png))
    writer.SetInputData(image)
    writer.Write()
    from vtk.util.numpy_support import vtk_to_numpy
    dims = image.GetDimensions()
    pixels = vtk_to_numpy(image.GetPointData().GetScalars()).reshape(dims[1], dims[0], -1)
    return pixels


def ras_of_pixel(app: SlicerApp, view: str, col: int, row: int) -> np.ndarray:
    """RAS position of pixel (col, row) of `render_slice_view`'s array (row 0 = first row of the vtkImageData)."""
    xy_to_ras = app.slice_logics[view].GetSliceNode().GetXYToRAS()
    return np.array(xy_to_ras.MultiplyPoint([col, row, 0, 1.0])[:3])
