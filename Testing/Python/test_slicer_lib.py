"""HLIPSlicerLib pieces without a scene: dependency decisions, the prompt editor model, the batch script."""
import json
import subprocess
import sys
import threading

import pytest

from slicer_env import MODULE_DIR, ROOT  # noqa: F401  (puts HLIPSlicer on sys.path)


def test_missing_requirements_and_install_flow(tmp_path, monkeypatch):
    from HLIPSlicerLib import dependencies as deps
    reqs = tmp_path / "requirements.txt"
    reqs.write_text("# comment\nnumpy>=1.0\nsurely-not-installed-pkg>=1.0\nnibabel>=999\n")
    assert deps.missing_requirements(reqs) == ["surely-not-installed-pkg>=1.0", "nibabel>=999"]
    installed = []
    monkeypatch.setattr(deps, "missing_requirements",
                        lambda path=reqs: [] if installed else ["surely-not-installed-pkg>=1.0"])
    deps.ensure(deps.Installer(confirm=lambda t: True, pip_install=installed.extend), reqs)
    assert installed == ["surely-not-installed-pkg>=1.0"]
    # a failed install (no network) becomes one message saying what to do; the caller keeps working
    installed.clear()

    def no_network(reqs):
        raise OSError("Temporary failure in name resolution")
    with pytest.raises(deps.DependencyError, match="network"):
        deps.ensure(deps.Installer(confirm=lambda t: True, pip_install=no_network), reqs)
    # no torch and no PyTorch extension: tells the user to install the extension
    monkeypatch.setattr(deps, "torch_available", lambda: False)

    def no_extension():
        raise deps.DependencyError("install the 'PyTorch' extension from the Extension Manager")
    with pytest.raises(deps.DependencyError, match="PyTorch"):
        deps.ensure(deps.Installer(confirm=lambda t: True, install_torch=no_extension), reqs)
    # never off the main thread
    errors = []
    thread = threading.Thread(target=lambda: errors.append(pytest.raises(RuntimeError, deps.ensure,
                                                                         deps.Installer(lambda t: True), reqs)))
    thread.start()
    thread.join()
    assert errors


def test_gpu_memory_warning():
    from HLIPSlicerLib.dependencies import device_warning
    assert "4.0 GiB" in device_warning("cuda", "fp32", memory_gb=4.0)
    assert device_warning("cuda", "fp32", memory_gb=24.0) == ""
    assert device_warning("cuda", "bf16", memory_gb=6.0) == ""
    assert device_warning("cpu") == ""


def test_prompt_tree_edits_and_located_issues(tmp_path):
    from HLIPSlicerLib.prompt_editor import PromptTree, format_path, parse_path
    assert parse_path("tasks[1].classes[0].prompts[2]") == ["tasks", 1, "classes", 0, "prompts", 2]
    assert format_path(["tasks", 1, "classes", 0]) == "tasks[1].classes[0]"
    tree = PromptTree.load("pub_brain_5")
    assert tree.issues() == []
    task = tree.add_task("tumour vs not", "multilabel")
    cls = tree.add_class(task, "Glioma", "glioma")
    assert tree.get(f"{cls}.negative_prompts") == ["No glioma"]
    tree.edit("templates[0]", "template", "no placeholder")
    tree.edit(f"{cls}", "class", "")
    issues = tree.issues_by_path()
    assert any("{}" in m for m in issues["templates[0]"])  # marked on the template item itself
    assert f"{cls}" in issues or f"{cls}.name" in issues
    marked = {item.path for item in tree.items() if item.issues}
    assert "templates[0]" in marked
    with pytest.raises(Exception):
        tree.save(tmp_path / "bad.json")  # invalid sets are not saved
    tree.edit("templates[0]", "template", "This MRI study shows: {}.")
    tree.edit(cls, "class", "Glioma")
    saved = tree.save(tmp_path / "ok.json")
    assert PromptTree.load(str(saved)).doc == tree.doc
    tree.remove(f"{cls}.negative_prompts[0]")
    assert "negative_prompts" not in tree.get(cls)  # an emptied optional list is dropped ...
    assert tree.issues()  # ... and the multilabel class is then reported as needing one


def test_prompt_tree_keeps_the_reference_class_valid():
    from HLIPSlicerLib.prompt_editor import PromptTree
    tree = PromptTree.load("pub_brain_5")
    assert tree.get("tasks[0].reference") == "Normal"
    tree.edit("tasks[0].classes[0]", "class", "No finding")       # renaming the reference renames it
    assert tree.get("tasks[0].reference") == "No finding" and tree.issues() == []
    tree.edit("tasks[0].classes[1]", "class", "Infarct")           # other classes leave it alone
    assert tree.get("tasks[0].reference") == "No finding"
    tree.remove("tasks[0].classes[0]")                             # removing it removes the reference
    assert "reference" not in tree.get("tasks[0]") and tree.issues() == []
    tree.doc["tasks"][1]["reference"] = "Normal"                   # hand-edited wrong: located on the task
    assert any("not a class of this task" in m for m in tree.issues_by_path()["tasks[1]"])


def test_batch_script_expands_inputs_and_fails_on_missing(tmp_path):
    script = MODULE_DIR / "Scripts" / "hlip_batch.py"
    sys.path.insert(0, str(script.parent))
    import hlip_batch
    (tmp_path / "studies" / "a").mkdir(parents=True)
    (tmp_path / "studies" / "b").mkdir()
    assert hlip_batch.expand_inputs([str(tmp_path / "studies")]) == [str(tmp_path / "studies" / "a"),
                                                                      str(tmp_path / "studies" / "b")]
    listing = tmp_path / "list.txt"
    listing.write_text("# studies\n/x/one\n/x/two\n")
    assert hlip_batch.expand_inputs([str(listing)]) == ["/x/one", "/x/two"]
    done = subprocess.run([sys.executable, str(script), "--output", str(tmp_path / "out")], capture_output=True,
                          text=True)
    assert done.returncode == 2  # usage error


@pytest.mark.slow
def test_batch_script_end_to_end(tmp_path, tokenizer_dir):
    """Two studies, one broken: same outputs as `hlip analyze`, exit code 1."""
    import numpy as np
    import torch
    from data_fixtures import affine_from, blob_volume
    from HLIPCore.model import create_model
    from HLIPCore.model.checkpoint import convert_checkpoint
    from HLIPCore.report import write_map_nifti
    torch.manual_seed(0)
    torch.save(create_model("tiny_multiscan_h3").state_dict(), tmp_path / "tiny.pt")
    model = convert_checkpoint(tmp_path / "tiny.pt", "tiny_multiscan_h3", tmp_path / "tiny", tokenizer=tokenizer_dir)
    studies = tmp_path / "studies"
    write_map_nifti(blob_volume((12, 40, 40), (6, 20, 24), (2, 5, 5)),
                    affine_from([-1, 0, 0], [0, -1, 0], (2.0, 2.0, 4.0), [0, 0, 0]), studies / "good" / "t1.nii.gz")
    (studies / "broken").mkdir()
    (studies / "broken" / "x.dcm").write_bytes(b"garbage" * 50)
    done = subprocess.run([sys.executable, str(MODULE_DIR / "Scripts" / "hlip_batch.py"), "--input", str(studies),
                           "--output", str(tmp_path / "out"), "--model", str(model), "--prompts", "pub_brain_5",
                           "--device", "cpu", "--attention", "none", "--no-overview"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    report = json.loads((tmp_path / "out" / "good" / "report.json").read_text())
    assert report["status"] == "ok"
    assert (tmp_path / "out" / "scores.csv").read_text().count("\n") == 3
