"""Which volume nodes make up the study, which of them the model will see (and why others are skipped), and
writing them as NRRD files for the worker. Uses the MRML scene only (no Qt).

Scan selection runs here, on the node names, with HLIPCore's own `select_scans` rules; the worker then gets
exactly the chosen volumes, written as scan000.nrrd, scan001.nrrd, ... in that order.
"""
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

import slicer

MIN_SLICES = 3  # as HLIPCore.data.LoadOptions.min_slices: thinner images are 2D (localizers, radiographs)


@dataclass
class PlannedScan:
    node: object                # vtkMRMLScalarVolumeNode
    name: str
    modality: str
    shape: Tuple[int, int, int]  # (K, J, I) like arrayFromVolume


@dataclass
class SkippedVolume:
    name: str
    reason: str


def subject_hierarchy():
    return slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)


def sh_item(node, create: bool = True) -> int:
    """The node's subject hierarchy item. In Slicer the plugin logic makes one for every data node; on a bare MRML
    scene (tests, PythonSlicer) there is none, so one is made under the scene."""
    sh = subject_hierarchy()
    item = sh.GetItemByDataNode(node)
    if not item and create:
        item = sh.CreateItem(sh.GetSceneItemID(), node)
    return item


def study_item(volume_nodes: Sequence) -> int:
    """The subject hierarchy item the results go under: the common 'Study' item of the inputs if any, else the
    parent of the first input (a folder or patient), else the scene."""
    sh = subject_hierarchy()
    parents = []
    for node in volume_nodes:
        item = sh_item(node)
        chain, parent = [], sh.GetItemParent(item)
        while parent and parent != sh.GetSceneItemID():
            chain.append(parent)
            parent = sh.GetItemParent(parent)
        parents.append(chain)
    if not parents:
        return sh.GetSceneItemID()
    for item in parents[0]:
        if sh.GetItemLevel(item) == "Study" and all(item in chain for chain in parents):
            return item
    return parents[0][0] if parents[0] else sh.GetSceneItemID()


def volumes_in_item(item: int) -> List:
    """Every scalar volume (not label maps) under a subject hierarchy item (a study, patient or folder), in tree
    order: 'all the series of the study at once'. A volume's own item gives that volume."""
    sh = subject_hierarchy()
    ids = [item]
    import vtk
    children = vtk.vtkIdList()
    sh.GetItemChildren(item, children, True)
    ids += [children.GetId(n) for n in range(children.GetNumberOfIds())]
    nodes = []
    for i in ids:
        node = sh.GetItemDataNode(i)
        if node is not None and node.IsA("vtkMRMLScalarVolumeNode") and node not in nodes:
            nodes.append(node)
    return nodes


def modality_of(node, array: Optional[np.ndarray]) -> str:
    """DICOM modality when Slicer's DICOM import recorded it, else guessed from the intensities as HLIPCore does
    for NIfTI/NRRD (air at -1000 means CT Hounsfield units)."""
    sh = subject_hierarchy()
    item = sh.GetItemByDataNode(node)
    for value in (node.GetAttribute("DICOM.Modality"), sh.GetItemAttribute(item, "DICOM.Modality") if item else ""):
        if value:
            return str(value).upper()
    if array is None or array.size == 0:
        return "OT"
    sample = array[:: max(1, array.shape[0] // 8)]
    return "CT" if float(np.percentile(sample, 1)) < -500 else "MR"


def plan_scans(volume_nodes: Sequence, selection=None) -> Tuple[List[PlannedScan], List[SkippedVolume]]:
    """(scans the worker will get, volumes left out with the reason), applying HLIPCore's ScanSelection rules."""
    from HLIPCore.data import Scan, Study, select_scans
    used, skipped, scans = [], [], []
    for node in volume_nodes:
        name = node.GetName()
        if node.IsA("vtkMRMLLabelMapVolumeNode"):
            skipped.append(SkippedVolume(name, "a label map (segmentation), not an image"))
            continue
        image = node.GetImageData()
        if image is None or image.GetNumberOfPoints() == 0:
            skipped.append(SkippedVolume(name, "no image data"))
            continue
        if image.GetNumberOfScalarComponents() != 1:
            skipped.append(SkippedVolume(name, f"{image.GetNumberOfScalarComponents()} components per voxel "
                                               "(colour or vector image), not a grey-level scan"))
            continue
        dims = image.GetDimensions()
        if min(dims) < MIN_SLICES:
            skipped.append(SkippedVolume(name, f"only {min(dims)} slice(s) (size {dims[0]}x{dims[1]}x{dims[2]}): "
                                               "a 2D image, not a volume"))
            continue
        array = slicer.util.arrayFromVolume(node)
        scan = Scan(array=array, affine=np.eye(4), modality=modality_of(node, array), description=name,
                    series_uid=node.GetID())
        scans.append(scan)
        used.append(PlannedScan(node, name, scan.modality, tuple(int(n) for n in array.shape)))
    if selection is not None and scans:
        chosen = select_scans(Study(scans=scans), selection)
        keep = {s.series_uid for s in chosen.scans}
        by_uid = {s.series_uid: s.description for s in scans}
        for reason in chosen.skipped:  # the scans' series_uid is the node ID
            skipped.append(SkippedVolume(by_uid.get(reason.series_uid, reason.source), reason.reason))
        used = [p for p in used if p.node.GetID() in keep]
    return used, skipped


def scan_file_name(index: int) -> str:
    return f"scan{index:03d}"


def export_volumes(volume_nodes: Sequence, folder: Path) -> List[str]:
    """Writes each volume as folder/scanNNN.nrrd with Slicer's own NRRD writer (its IJKToRAS in the header);
    returns the file paths in order. The nodes are not modified (no storage node is added to them)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for index, node in enumerate(volume_nodes):
        path = folder / f"{scan_file_name(index)}.nrrd"
        writer = slicer.vtkMRMLVolumeArchetypeStorageNode()
        writer.SetFileName(str(path))
        writer.SetUseCompression(False)  # fast; the file is temporary
        if not writer.WriteData(node) or not path.is_file():
            raise OSError(f"could not write volume '{node.GetName()}' to {path}")
        files.append(str(path))
    return files
