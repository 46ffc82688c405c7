"""HLIPSlicer logic on a real (headless) MRML scene: scans used/skipped, the real worker child process, the table,
map volumes on the inputs' exact geometry, slice-view layers, cancel, errors, scene save, rendered overlay."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from data_fixtures import affine_from, blob_volume, write_series
from slicer_env import ARTIFACTS, ROOT, ras_of_pixel, render_slice_view, slicer_module, mrml_app  # noqa: F401

import slicer

AX = affine_from([-1, 0, 0], [0, -1, 0], (2.0, 2.0, 4.0), [60, 60, -30])
SAG = affine_from([0, 1, 0], [0, 0, -1], (2.0, 2.0, 5.0), [-30, -60, 60])
BLOB = dict(shape=(12, 40, 40), centre=(6, 20, 24), radius=(2, 5, 5))


def add_study(names=("T1 AX", "T2 SAG")):
    """Two MR volumes of a blob phantom under Patient > Study in the subject hierarchy."""
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
    patient = sh.CreateSubjectItem(sh.GetSceneItemID(), "Phantom patient")
    study_item = sh.CreateStudyItem(patient, "Phantom study")
    arrays = [blob_volume(BLOB["shape"], BLOB["centre"], BLOB["radius"]),
              blob_volume((10, 36, 36), (5, 18, 18), (2, 4, 4), seed=1)]
    nodes = []
    for name, array, affine in zip(names, arrays, (AX, SAG)):
        node = slicer.util.addVolumeFromArray(array, ijkToRAS=affine, name=name)
        sh.SetItemParent(sh.CreateItem(sh.GetSceneItemID(), node), study_item)
        nodes.append(node)
    return study_item, nodes


def slicer_module_ijk(node):
    from HLIPSlicerLib.overlays import ijk_to_ras as f
    return f(node)


def test_study_volumes_and_plan(mrml_app, slicer_module):
    item, nodes = add_study()
    label = slicer.util.addVolumeFromArray(np.zeros((5, 8, 8), np.uint8), name="seg",
                                           nodeClassName="vtkMRMLLabelMapVolumeNode")
    flat = slicer.util.addVolumeFromArray(np.zeros((1, 32, 32), np.float32), name="localizer")
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
    for n in (label, flat):
        sh.SetItemParent(sh.CreateItem(sh.GetSceneItemID(), n), item)
    logic = slicer_module.HLIPSlicerLogic(pythonExecutable=sys.executable)
    found = logic.studyVolumes(item)
    assert found == nodes + [label, flat]  # everything under the study; planScans says what is usable
    used, skipped = logic.planScans(found, maxScans=1)
    assert [u.node for u in used] == nodes[:1]
    reasons = {s.name: s.reason for s in skipped}
    assert "2D image" in reasons["localizer"] and "label map" in reasons["seg"]
    assert "more than 1 scans" in reasons["T2 SAG"]


@pytest.mark.slow
def test_analyze_volumes_end_to_end(mrml_app, slicer_module, tiny_model_dir, tmp_path):
    item, nodes = add_study()
    logic = slicer_module.HLIPSlicerLogic(pythonExecutable=sys.executable)
    stages = []
    table = logic.analyzeVolumes(nodes, str(tiny_model_dir), "pub_brain_5", outputFolder=tmp_path / "out",
                                 device="cpu", progressCallback=lambda f, s: stages.append((f, s)))
    # progress came from the worker's HLIP_PROGRESS lines, in order
    assert stages[0][1] == "starting" and stages[-1] == (1.0, "done")
    assert [f for f, _ in stages] == sorted(f for f, _ in stages)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    rows = logic.scores(table)
    assert [(r["task"], r["class"]) for r in rows] == [(t, c) for t, cs in report["scores"].items() for c in cs]
    for r in rows:
        assert r["probability"] == pytest.approx(report["scores"][r["task"]][r["class"]], abs=1e-9)
        assert r["map"]  # attention="all": every class has maps
    assert table.GetTable().GetNumberOfColumns() == 5 and table.GetTable().GetNumberOfRows() == len(rows)

    # subject hierarchy: the table sits in a folder under the study
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
    folder = sh.GetItemParent(sh.GetItemByDataNode(table))
    assert sh.GetItemParent(folder) == item

    maps = logic.showAttentionMap(table, "Glioma", opacity=0.35, threshold=0.3)
    assert len(maps) == 2
    for source, overlay in zip(nodes, maps):
        np.testing.assert_array_equal(slicer_module_ijk(overlay), slicer_module_ijk(source))  # exact, not close
        assert slicer.util.arrayFromVolume(overlay).shape == slicer.util.arrayFromVolume(source).shape
        assert sh.GetItemParent(sh.GetItemByDataNode(overlay)) == folder
        display = overlay.GetDisplayNode()
        assert display.GetApplyThreshold() and display.GetLowerThreshold() == pytest.approx(0.3)
    for view in ("Red", "Yellow", "Green"):
        composite = mrml_app.composite(view)
        assert composite.GetBackgroundVolumeID() == nodes[0].GetID()
        assert composite.GetForegroundVolumeID() == maps[0].GetID()
        assert composite.GetForegroundOpacity() == pytest.approx(0.35)
    # a view showing the second series gets that series' map
    mrml_app.composite("Yellow").SetBackgroundVolumeID(nodes[1].GetID())
    logic.showAttentionMap(table, "Glioma", opacity=0.5)
    assert mrml_app.composite("Yellow").GetForegroundVolumeID() == maps[1].GetID()
    assert mrml_app.composite("Red").GetForegroundVolumeID() == maps[0].GetID()
    # showing the same class again reuses the loaded maps
    count = slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")
    logic.showAttentionMap(table, "Glioma")
    assert slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == count

    # saved with the scene: an .mrb round trip keeps the table, its report, the maps and their geometry
    mrb = tmp_path / "scene.mrb"
    assert slicer.mrmlScene.WriteToMRB(str(mrb))
    expected = slicer_module_ijk(maps[0])
    slicer.mrmlScene.Clear(False)
    assert slicer.mrmlScene.ReadFromMRB(str(mrb))
    tables = [slicer.mrmlScene.GetNthNodeByClass(i, "vtkMRMLTableNode")
              for i in range(slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLTableNode"))]
    restored = [t for t in tables if t.GetAttribute("HLIP.Role") == "result"][0]
    again = logic.scores(restored)
    assert [(r["task"], r["class"], r["top"], r["map"]) for r in again] == \
        [(r["task"], r["class"], r["top"], r["map"]) for r in rows]
    assert [r["probability"] for r in again] == pytest.approx([r["probability"] for r in rows], abs=1e-5)  # TSV
    assert logic.report(restored) == report  # the full report travels in a node attribute
    reloaded = [restored.GetNthNodeReference("HLIPMap", n) for n in range(restored.GetNumberOfNodeReferences("HLIPMap"))]
    assert len(reloaded) == 2
    np.testing.assert_allclose(slicer_module_ijk(reloaded[0]), expected, atol=1e-6)


@pytest.mark.slow
def test_analyze_folder_loads_the_used_series_with_their_dicom_geometry(mrml_app, slicer_module, tiny_model_dir,
                                                                       tmp_path):
    """A DICOM folder as input: the worker reads it and writes the scans it used as NIfTI next to the results; the
    logic loads those as volume nodes (the maps' backgrounds) with the series' geometry, then the maps copy each
    loaded volume's IJKToRAS exactly. Nothing was in the scene before."""
    from HLIPSlicerLib import results
    series = {"T1 AX": (blob_volume(BLOB["shape"], BLOB["centre"], BLOB["radius"]), AX),
              "T2 SAG": (blob_volume((10, 36, 36), (5, 18, 18), (2, 4, 4), seed=1), SAG)}
    folder = tmp_path / "dicom_study"
    for n, (description, (array, affine)) in enumerate(series.items()):
        write_series(folder / f"series{n + 1}", array, affine, description=description, series_number=n + 1)
    assert slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 0
    logic = slicer_module.HLIPSlicerLogic(pythonExecutable=sys.executable)
    table = logic.analyzeFolder(str(folder), str(tiny_model_dir), "pub_brain_5", outputFolder=tmp_path / "out",
                                device="cpu", mapSmoothMm=6)

    # the table node against report.json
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert {m["smooth_mm"] for m in report["maps"]} == {6}  # the option reached the worker's analysis
    assert logic.report(table) == report and len(report["scans"]) == 2
    rows = logic.scores(table)
    assert [(r["task"], r["class"]) for r in rows] == [(t, c) for t, cs in report["scores"].items() for c in cs]
    for r in rows:
        assert r["probability"] == pytest.approx(report["scores"][r["task"]][r["class"]], abs=1e-9)

    # the used series, loaded as volume nodes: voxels as stored in DICOM, IJKToRAS = the series' geometry (through
    # DICOM's 6-decimal text and the worker's float32 NIfTI affine: 1e-4 mm in general; exact for these values)
    inputs = results.input_nodes_of(table)
    by_name = {node.GetName(): node for node in inputs}
    assert sorted(by_name) == sorted(series)
    assert slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 2
    for name, (array, affine) in series.items():
        node = by_name[name]
        np.testing.assert_allclose(slicer_module_ijk(node), affine, atol=1e-4)
        np.testing.assert_allclose(slicer.util.arrayFromVolume(node), array, atol=0.5)  # int16 in the files
        assert node.GetAttribute("DICOM.Modality") == "MR"

    # the maps: exactly the loaded volume's IJKToRAS, shown over it in every slice view
    maps = logic.showAttentionMap(table, "Glioma", opacity=0.4, threshold=0.3)
    assert len(maps) == 2
    map_of = {}
    for overlay in maps:
        source = by_name[overlay.GetName().split(" map - ", 1)[1]]
        map_of[source.GetID()] = overlay
        np.testing.assert_array_equal(slicer_module_ijk(overlay), slicer_module_ijk(source))
        assert slicer.util.arrayFromVolume(overlay).shape == slicer.util.arrayFromVolume(source).shape
        assert overlay.GetDisplayNode().GetLowerThreshold() == pytest.approx(0.3)
    assert len(map_of) == 2
    for view in ("Red", "Yellow", "Green"):
        composite = mrml_app.composite(view)
        assert composite.GetBackgroundVolumeID() == inputs[0].GetID()
        assert composite.GetForegroundVolumeID() == map_of[inputs[0].GetID()].GetID()
        assert composite.GetForegroundOpacity() == pytest.approx(0.4)

    # subject hierarchy: the series in a folder named after the input, the results in a folder under it
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
    series_folder = sh.GetItemParent(sh.GetItemByDataNode(inputs[0]))
    assert sh.GetItemName(series_folder) == "dicom_study"
    assert all(sh.GetItemParent(sh.GetItemByDataNode(node)) == series_folder for node in inputs)
    result_folder = sh.GetItemParent(sh.GetItemByDataNode(table))
    assert sh.GetItemParent(result_folder) == series_folder
    assert all(sh.GetItemParent(sh.GetItemByDataNode(overlay)) == result_folder for overlay in maps)


@pytest.mark.slow
def test_analyze_nonblocking_and_cancel_leaves_scene_unchanged(mrml_app, slicer_module, tiny_model_dir, tmp_path):
    _, nodes = add_study()
    logic = slicer_module.HLIPSlicerLogic(pythonExecutable=sys.executable)
    logic.workerEnvironment = {"HLIP_WORKER_PAUSE_S": "1.0"}  # slow the worker down so the cancel lands mid-run
    before = slicer.mrmlScene.GetNumberOfNodes()
    done = []
    run = logic.analyzeVolumes(nodes, str(tiny_model_dir), "pub_brain_5", device="cpu", blocking=False,
                               completedCallback=done.append)
    assert logic.isRunning()
    deadline = time.monotonic() + 120
    while not run.stage and time.monotonic() < deadline:  # wait for the first progress line
        logic.poll()
        time.sleep(0.05)
    assert run.stage
    logic.cancel()
    run.wait(timeout=60)
    assert done == [run] and run.state == "cancelled" and not logic.isRunning()
    assert slicer.mrmlScene.GetNumberOfNodes() == before
    assert run.handle.proc.poll() is not None  # the child is gone
    assert not run.work_dir.exists()  # temporary files removed


@pytest.mark.slow
def test_corrupt_checkpoint_and_missing_model_give_clear_messages(mrml_app, slicer_module, tmp_path):
    _, nodes = add_study()
    logic = slicer_module.HLIPSlicerLogic(pythonExecutable=sys.executable)
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a checkpoint" * 100)
    before = slicer.mrmlScene.GetNumberOfNodes()
    with pytest.raises(slicer_module.HLIPSlicerError) as err:
        logic.analyzeVolumes(nodes, str(bad), "pub_brain_5", device="cpu")
    assert "broken.pt" in str(err.value) and "check the model file" in str(err.value)
    assert slicer.mrmlScene.GetNumberOfNodes() == before and not logic.isRunning()
    with pytest.raises(slicer_module.HLIPSlicerError) as err:
        logic.analyzeVolumes(nodes, "no-such-model", "pub_brain_5", device="cpu")
    assert "unknown model 'no-such-model'" in str(err.value)


def test_worker_exit_codes_and_protocol(tmp_path):
    from HLIPSlicerLib import process
    assert process.parse_line("HLIP_PROGRESS 0.350 running the model")[1].stage == "running the model"
    assert process.parse_line("HLIP_ERROR boom") == ("error", "boom")
    assert process.parse_line("some log") == ("log", "some log")
    bad = tmp_path / "job.json"
    bad.write_text("{}")
    done = subprocess.run([sys.executable, str(process.WORKER_SCRIPT), str(bad)], capture_output=True, text=True)
    assert done.returncode == 2 and "HLIP_ERROR cannot read job file" in done.stdout


def test_overlay_sits_over_the_lesion(mrml_app, slicer_module):
    """The overlay path (add_map_volume with the input's geometry, colour map, threshold, foreground layer) drawn by
    the slice logic: coloured pixels are exactly where the lesion is. The map here is the lesion mask itself."""
    from HLIPSlicerLib import overlays
    _, nodes = add_study()
    source = nodes[0]
    image = slicer.util.arrayFromVolume(source)
    mask = (image > 500).astype(np.float32)
    overlay = overlays.add_map_volume(mask, source, "lesion map", threshold=0.5)
    overlays.show_in_slice_views({source.GetID(): overlay}, opacity=0.6, first_input=source)
    centre_ras = (AX @ np.array([BLOB["centre"][2], BLOB["centre"][1], BLOB["centre"][0], 1.0]))[:3]
    pixels = render_slice_view(mrml_app, "Red", ARTIFACTS / "hlip_overlay_red.png", ras_center=centre_ras,
                               fov_mm=100)
    render_slice_view(mrml_app, "Yellow", ARTIFACTS / "hlip_overlay_yellow.png", ras_center=centre_ras, fov_mm=100)
    rgb = pixels[..., :3].astype(int)
    coloured = (np.abs(rgb[..., 0] - rgb[..., 1]) > 20) | (np.abs(rgb[..., 1] - rgb[..., 2]) > 20)
    assert coloured.sum() > 50
    inverse = np.linalg.inv(AX)
    k0, j0, i0 = BLOB["centre"]
    rk, rj, ri = BLOB["radius"]
    rows, cols = np.nonzero(coloured)
    for row, col in zip(rows, cols):
        i, j, k = (inverse @ np.append(ras_of_pixel(mrml_app, "Red", col, row), 1.0))[:3]
        assert abs(i - i0) <= ri + 1 and abs(j - j0) <= rj + 1 and abs(k - k0) <= rk + 1
    # and the lesion's in-plane extent is covered: (2r+1) x (2r+1) voxels of 2 mm at 100 mm / 256 px
    assert coloured.sum() >= 0.6 * ((2 * ri + 1) * 2 * 256 / 100) * ((2 * rj + 1) * 2 * 256 / 100)
    # threshold: raised above the mask value the overlay disappears
    overlays.set_threshold(overlay, 1.5)
    pixels = render_slice_view(mrml_app, "Red", ARTIFACTS / "hlip_overlay_red_thresholded.png", fov_mm=100)
    rgb = pixels[..., :3].astype(int)
    assert not ((np.abs(rgb[..., 0] - rgb[..., 1]) > 20) | (np.abs(rgb[..., 1] - rgb[..., 2]) > 20)).any()
