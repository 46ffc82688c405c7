"""The result of an analysis in the scene: a table node (task, class, probability) that also remembers the inputs
and the output folder, grouped with its maps in a subject hierarchy folder under the study. Everything is kept in
node attributes and node references, so it is saved and restored with the scene.
"""
import json
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import slicer

from .study import sh_item, subject_hierarchy

COLUMNS = ("Task", "Class", "Probability", "Top", "Map")
ATTR_REPORT = "HLIP.Report"              # report.json text
ATTR_FOLDER = "HLIP.OutputFolder"        # where the worker wrote report.json and maps/
ATTR_ROLE = "HLIP.Role"                  # "result" on the table, "attentionMap" on map volumes, "study" on scans
INPUT_REF = "HLIPInput"                  # table -> input volumes, in scan order (report scan_index)
MAP_REF = "HLIPMap"                      # table -> loaded map volumes
FOLDER_ATTR = "HLIP.ResultFolder"


def _column(name: str, values, numeric: bool = False):
    """A named vtkDoubleArray (numeric) or vtkStringArray holding `values`, for a table node column."""
    import vtk
    array = vtk.vtkDoubleArray() if numeric else vtk.vtkStringArray()
    array.SetName(name)
    for v in values:
        array.InsertNextValue(float(v) if numeric else str(v))
    return array


def score_rows(report: dict) -> List[Tuple[str, str, float, bool, bool]]:
    """(task, class, probability, is the task's top class, has a map) in the prompt set's order."""
    with_map = {(m["task"], m["class"]) for m in report.get("maps", [])}
    rows = []
    for task, classes in (report.get("scores") or {}).items():
        top = (report.get("top") or {}).get(task)
        for cls, p in classes.items():
            rows.append((task, cls, float(p), cls == top, (task, cls) in with_map))
    return rows


def build_table(report: dict, output_folder: Path, input_nodes, name: Optional[str] = None):
    """A new vtkMRMLTableNode with one row per (task, class), referencing the input volumes in scan order."""
    rows = score_rows(report)
    table = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTableNode",
                                               slicer.mrmlScene.GenerateUniqueName(name or "HLIP scores"))
    t = table.GetTable()
    t.AddColumn(_column(COLUMNS[0], [r[0] for r in rows]))
    t.AddColumn(_column(COLUMNS[1], [r[1] for r in rows]))
    t.AddColumn(_column(COLUMNS[2], [r[2] for r in rows], numeric=True))
    t.AddColumn(_column(COLUMNS[3], ["yes" if r[3] else "" for r in rows]))
    t.AddColumn(_column(COLUMNS[4], ["yes" if r[4] else "" for r in rows]))
    table.SetUseColumnTitleAsColumnHeader(True)
    table.SetLocked(True)  # results are not meant to be edited by hand
    table.SetAttribute(ATTR_ROLE, "result")
    table.SetAttribute(ATTR_REPORT, json.dumps(report))
    table.SetAttribute(ATTR_FOLDER, str(output_folder))
    for node in input_nodes:
        table.AddNodeReferenceID(INPUT_REF, node.GetID())
    table.Modified()
    return table


def report_of(table) -> dict:
    text = table.GetAttribute(ATTR_REPORT) if table else None
    return json.loads(text) if text else {}


def output_folder_of(table) -> Path:
    return Path(table.GetAttribute(ATTR_FOLDER) or ".")


def input_nodes_of(table) -> list:
    return [table.GetNthNodeReference(INPUT_REF, n) for n in range(table.GetNumberOfNodeReferences(INPUT_REF))]


def table_rows(table) -> List[Dict]:
    """The table's rows as dicts (what the panel shows and what tests read back)."""
    t = table.GetTable()
    out = []
    for r in range(t.GetNumberOfRows()):
        out.append({"task": t.GetValueByName(r, "Task").ToString(), "class": t.GetValueByName(r, "Class").ToString(),
                    "probability": t.GetValueByName(r, "Probability").ToDouble(),
                    "top": t.GetValueByName(r, "Top").ToString() == "yes",
                    "map": t.GetValueByName(r, "Map").ToString() == "yes"})
    return out


def result_folder_item(table, parent_item: int, name: str) -> int:
    """A subject hierarchy folder under the study holding the table (and later the maps)."""
    sh = subject_hierarchy()
    folder = sh.CreateFolderItem(parent_item, name)
    sh.SetItemAttribute(folder, FOLDER_ATTR, "1")
    sh.SetItemParent(sh_item(table), folder)
    return folder


def put_in_result_folder(table, node) -> None:
    """Puts `node` in the same subject hierarchy folder as the result table."""
    sh = subject_hierarchy()
    folder = sh.GetItemParent(sh_item(table))
    sh.SetItemParent(sh_item(node), folder)
