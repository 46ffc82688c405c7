"""Attention maps as overlays: one map volume per input scan with exactly the input's IJKToRAS (and parent
transform), a colour map, a threshold below which the map is transparent, and the slice views' foreground layer.

The worker writes each map as NIfTI with the scan's own affine; here its voxels are read (nibabel) and put in a
new scalar volume whose IJKToRAS is copied from the input node, after checking that both agree.
"""
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np

import slicer

COLOR_NODE_NAME = "HLIP attention"
COLOR_SINGLETON = "HLIPAttentionColors"
AFFINE_TOLERANCE_MM = 1e-3


def ijk_to_ras(node) -> np.ndarray:
    import vtk
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def attention_color_node():
    """A 'hot' lookup table (dark red -> red -> orange -> yellow; never grey, so it stands out on any scan),
    created once per scene and saved with it."""
    scene = slicer.mrmlScene
    node = scene.GetSingletonNode(COLOR_SINGLETON, "vtkMRMLColorTableNode")
    if node is not None:
        return node
    node = slicer.vtkMRMLColorTableNode()
    node.SetName(COLOR_NODE_NAME)
    node.SetSingletonTag(COLOR_SINGLETON)
    node.SetTypeToUser()
    node.SetNumberOfColors(256)
    for i in range(256):
        t = i / 255.0
        r, g, b = min(1.0, 0.35 + 1.5 * t), min(1.0, max(0.0, 1.6 * t - 0.45)), 0.0
        node.SetColor(i, f"{i}", r, g, b, 1.0)
    node.SetHideFromEditors(False)
    scene.AddNode(node)
    return node


def read_map(path: Path, input_node) -> np.ndarray:
    """(K, J, I) float32 map; raises ValueError when it does not sit on the input's voxel grid."""
    import nibabel as nib
    image = nib.load(str(path))
    data = np.asarray(image.dataobj, dtype=np.float32)
    array = np.ascontiguousarray(data.transpose(2, 1, 0))
    expected = tuple(reversed(input_node.GetImageData().GetDimensions()))
    if array.shape != expected:
        raise ValueError(f"{Path(path).name}: map shape {array.shape} differs from '{input_node.GetName()}' "
                         f"{expected}")
    error = float(np.abs(np.asarray(image.affine) - ijk_to_ras(input_node)).max())
    if error > AFFINE_TOLERANCE_MM * max(1.0, float(np.abs(ijk_to_ras(input_node)).max())):
        raise ValueError(f"{Path(path).name}: map geometry differs from '{input_node.GetName()}' by {error:.3g} mm")
    return array


def add_map_volume(array: np.ndarray, input_node, name: str, threshold: float = 0.2):
    """A scalar volume with the input's IJKToRAS and parent transform, displayed with the attention colours."""
    import vtk
    matrix = vtk.vtkMatrix4x4()
    input_node.GetIJKToRASMatrix(matrix)
    node = slicer.util.addVolumeFromArray(array.astype(np.float32, copy=False), ijkToRAS=matrix,
                                          name=slicer.mrmlScene.GenerateUniqueName(name))
    node.SetAndObserveTransformNodeID(input_node.GetTransformNodeID())
    style_map(node, threshold)
    return node


def style_map(node, threshold: float) -> None:
    display = node.GetDisplayNode()
    if display is None:
        node.CreateDefaultDisplayNodes()
        display = node.GetDisplayNode()
    display.SetAndObserveColorNodeID(attention_color_node().GetID())
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(0.0, 1.0)  # maps are normalised to 0..1 over the study
    set_threshold(node, threshold)


def set_threshold(node, threshold: float) -> None:
    """Voxels below `threshold` are transparent in the slice views."""
    display = node.GetDisplayNode()
    display.AutoThresholdOff()
    display.SetThreshold(float(threshold), 1.0e6)
    display.ApplyThresholdOn()


def show_in_slice_views(maps_by_input: Dict[str, object], opacity: float, first_input=None,
                        views: Optional[Sequence[str]] = None) -> None:
    """Every slice view (Red, Yellow, Green, ...) shows, as foreground, the map of the input scan that is its
    background; a view whose background is none of the inputs gets the first input and its map."""
    scene = slicer.mrmlScene
    for n in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
        composite = scene.GetNthNodeByClass(n, "vtkMRMLSliceCompositeNode")
        if views and composite.GetLayoutName() not in views:
            continue
        background = composite.GetBackgroundVolumeID()
        if background not in maps_by_input and first_input is not None:
            composite.SetBackgroundVolumeID(first_input.GetID())
            background = first_input.GetID()
        overlay = maps_by_input.get(background)
        composite.SetForegroundVolumeID(overlay.GetID() if overlay is not None else None)
        composite.SetForegroundOpacity(float(opacity))


def set_opacity(opacity: float) -> None:
    slicer.util.setSliceViewerLayers(foregroundOpacity=float(opacity))


def hide_overlays(map_ids: Sequence[str]) -> None:
    scene = slicer.mrmlScene
    for n in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
        composite = scene.GetNthNodeByClass(n, "vtkMRMLSliceCompositeNode")
        if composite.GetForegroundVolumeID() in map_ids:
            composite.SetForegroundVolumeID(None)
