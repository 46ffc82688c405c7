"""Analyze end to end with a small random-weight model: scores, maps on the original voxels, reports, batches."""
import csv
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from data_fixtures import affine_from, blob_volume, dicomdir_tests_folder, write_series
from HLIPCore.analyze import AnalyzeOptions, Analyzer, analyze_batch
from HLIPCore.errors import ConfigError, InputError
from HLIPCore.prompts import PromptSet, load_prompt_set
from HLIPCore.zeroshot import build_classifier, encode_texts, ensemble

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory):
    """Two MR series (axial and sagittal) of a blob phantom, written as real DICOM files."""
    root = tmp_path_factory.mktemp("study") / "study_A"
    ax = affine_from([-1, 0, 0], [0, -1, 0], (2.0, 2.0, 4.0), [60, 60, -30])
    write_series(root / "ax", blob_volume((12, 40, 40), (6, 20, 24), (2, 5, 5)), ax, description="T1 AX")
    sag = affine_from([0, 1, 0], [0, 0, -1], (2.0, 2.0, 5.0), [-30, -60, 60])
    write_series(root / "sag", blob_volume((10, 36, 36), (5, 18, 18), (2, 4, 4), seed=1), sag, description="T2 SAG")
    return root


def options(model_dir, **kw):
    base = dict(model=str(model_dir), prompts="pub_brain_5", device="cpu", attention="top")
    base.update(kw)
    return AnalyzeOptions(**base)


def test_scores_maps_and_report(tiny_model_dir, study_dir, tmp_path):
    report = Analyzer(options(tiny_model_dir)).analyze(study_dir, tmp_path / "out")
    on_disk = json.loads((tmp_path / "out" / "report.json").read_text())
    assert on_disk == report and report["status"] == "ok" and len(report["scans"]) == 2
    ps = load_prompt_set("pub_brain_5")
    for task in ps.tasks:
        probs = report["scores"][task.name]
        assert set(probs) == {c.name for c in task.classes}
        assert abs(sum(probs.values()) - 1.0) < 1e-5  # multiclass: softmax over the task
    maps = report["maps"]
    assert {m["task"] for m in maps} == {t.name for t in ps.tasks}  # --attention top: one class per task
    for entry in maps:
        image = nib.load(tmp_path / "out" / entry["file"])
        scan = report["scans"][entry["scan_index"]]
        assert image.shape == tuple(reversed(scan["shape"]))  # (I, J, K) of the input scan
        data = image.get_fdata()
        assert 0.0 <= data.min() and data.max() <= 1.0 and np.isfinite(data).all()
    # the map of scan 0 carries exactly the input series' affine
    from HLIPCore.data import load_study
    scans = load_study(study_dir).scans
    first = [m for m in maps if m["scan_index"] == 0][0]
    index = [s.description for s in scans].index(report["scans"][0]["description"])
    np.testing.assert_allclose(nib.load(tmp_path / "out" / first["file"]).affine, scans[index].affine, atol=1e-4)
    assert (tmp_path / "out" / "overview.png").stat().st_size > 1000


def test_scores_do_not_depend_on_class_order(tiny_model_dir, study_dir, tmp_path):
    ps = load_prompt_set("pub_brain_5")
    d = ps.to_dict()
    for task in d["tasks"]:
        task["classes"] = list(reversed(task["classes"]))
    reversed_file = tmp_path / "reversed.json"
    reversed_file.write_text(json.dumps(d))
    a = Analyzer(options(tiny_model_dir, attention="none")).analyze(study_dir, tmp_path / "a")
    reversed_options = options(tiny_model_dir, attention="none", prompts=str(reversed_file))
    b = Analyzer(reversed_options).analyze(study_dir, tmp_path / "b")
    for task, probs in a["scores"].items():
        for cls, p in probs.items():
            assert abs(b["scores"][task][cls] - p) < 1e-6


def test_template_ensembling_equals_formula(tiny_model_dir, tmp_path):
    from HLIPCore.model import create_model, create_tokenizer
    model, tok = create_model(tiny_model_dir), create_tokenizer(tiny_model_dir)
    ps = PromptSet.from_dict({"name": "t", "templates": ["a scan of {}.", "this mri study shows: {}."],
                              "tasks": [{"name": "d", "kind": "multiclass", "classes": [
                                  {"name": "A", "prompts": ["glioma", "mass lesion"]},
                                  {"name": "B", "prompts": ["normal brain"]}]}]})
    clf = build_classifier(model, tok, ps, cache=tmp_path)
    texts = ["a scan of glioma.", "a scan of mass lesion.", "this mri study shows: glioma.",
             "this mri study shows: mass lesion."]
    with torch.no_grad():
        e = torch.nn.functional.normalize(model.encode_text(tok(texts)), dim=-1)
    expected = e.mean(0) / e.mean(0).norm()
    torch.testing.assert_close(clf.weights["d"][0], expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ensemble(encode_texts(model, tok, texts)), expected, atol=1e-5, rtol=1e-5)
    # the cache returns the same embeddings without running the text tower
    model.text.forward = None  # would fail if called
    cached = build_classifier(model, tok, ps, cache=tmp_path)
    torch.testing.assert_close(cached.weights["d"], clf.weights["d"])
    # the score a map explains: the class's log-probability in a multiclass task (what sets it apart from the
    # task's other classes), whose gradient ignores what raises every class's logit alike
    feats = torch.nn.functional.normalize(torch.randn(3, e.shape[1]), dim=-1)
    torch.testing.assert_close(clf.class_score(feats, "d", "A"), torch.log_softmax(clf.logits(feats)["d"], -1)[:, 0])
    assert clf.score_signature("d", "A") != clf.score_signature("d", "B")
    # with a reference class the other classes' maps explain their log-odds against it; the reference's own map
    # stays its log-probability; scores are unchanged
    doc = ps.to_dict()
    doc["tasks"][0]["reference"] = "B"
    ref = build_classifier(model, tok, PromptSet.from_dict(doc), cache=tmp_path)
    logits = ref.logits(feats)["d"]
    torch.testing.assert_close(ref.class_score(feats, "d", "A"), logits[:, 0] - logits[:, 1])
    torch.testing.assert_close(ref.class_score(feats, "d", "B"), torch.log_softmax(logits, -1)[:, 1])
    assert ref.scores(feats) == clf.scores(feats)
    assert ref.score_signature("d", "A") != clf.score_signature("d", "A")
    assert ref.score_signature("d", "B") == clf.score_signature("d", "B")


def test_batch_continues_past_a_corrupt_study_and_skips_finished(tiny_model_dir, study_dir, tmp_path):
    broken = tmp_path / "broken_study"
    broken.mkdir()
    (broken / "image.dcm").write_bytes(b"DICM" + bytes(300))
    opts = options(tiny_model_dir, attention="none")
    rows = analyze_batch([study_dir, broken], tmp_path / "batch", opts, show_progress=False)
    assert [r["status"] for r in rows] == ["ok", "error"] and "image.dcm" in rows[1]["error"] or "broken" in rows[1]["error"]
    with open(tmp_path / "batch" / "scores.csv") as f:
        table = list(csv.DictReader(f))
    assert table[0]["status"] == "ok" and float(table[0]["disease/Normal"]) > 0
    assert table[1]["status"] == "error" and table[1]["error"]
    report = tmp_path / "batch" / "study_A" / "report.json"
    stamp = report.stat().st_mtime_ns
    analyze_batch([study_dir], tmp_path / "batch", opts, show_progress=False)
    assert report.stat().st_mtime_ns == stamp  # finished study not redone


def test_hlip_analyze_cli_says_a_failure_once(tiny_model_dir, study_dir, tmp_path):
    """Bad input on the command line: one line naming the study for a single study (no progress bar); in a batch
    the failure is also logged as it happens, and --no-progress leaves no bar in a log file."""
    empty = tmp_path / "empty_folder"
    empty.mkdir()
    base = [sys.executable, "-m", "HLIPCore.cli.main", "analyze", "--model", str(tiny_model_dir), "--prompts",
            "pub_brain_5", "--attention", "none", "--device", "cpu"]
    done = subprocess.run(base + [str(empty), "--out", str(tmp_path / "one")], cwd=ROOT, capture_output=True, text=True)
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert done.returncode == 1 and lines == [f"empty_folder: FAILED: {empty}: empty folder (no files)"], lines
    done = subprocess.run(base + [str(study_dir), str(empty), "--out", str(tmp_path / "two"), "--no-progress"],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 1 and "studies:" not in done.stderr, done.stderr
    assert "ERROR: empty_folder: " in done.stderr and "empty_folder: FAILED" in done.stdout
    assert "1/2 studies analysed" in done.stdout


def test_rollout_maps(tiny_model_dir, study_dir, tmp_path):
    report = Analyzer(options(tiny_model_dir, attention_method="rollout")).analyze(study_dir, tmp_path / "r")
    assert {(m["task"], m["class"]) for m in report["maps"]} == {("rollout", "class-agnostic")}


def test_map_method_auto_is_gradcam_for_a_linear_patch_model_and_refined_is_refused(tiny_model_dir, study_dir,
                                                                                     tmp_path):
    report = Analyzer(options(tiny_model_dir)).analyze(study_dir, tmp_path / "auto")
    assert {m["method"] for m in report["maps"]} == {"gradcam"}
    with pytest.raises(ConfigError, match="convolutional stem"):
        Analyzer(options(tiny_model_dir, attention_method="refined"))


def test_maps_smoothed_in_mm_on_request_and_nonsense_refused(tiny_model_dir, study_dir, tmp_path):
    plain = Analyzer(options(tiny_model_dir, attention="Glioma")).analyze(study_dir, tmp_path / "plain")
    smooth = Analyzer(options(tiny_model_dir, attention="Glioma", map_smooth_mm=10)).analyze(study_dir, tmp_path / "s")
    assert {m["smooth_mm"] for m in plain["maps"]} == {0.0} and {m["smooth_mm"] for m in smooth["maps"]} == {10}
    a, b = ([np.asarray(nib.load(str(root / m["file"])).dataobj) for m in r["maps"]]
            for root, r in ((tmp_path / "plain", plain), (tmp_path / "s", smooth)))
    # normalised to 1 on the model grid, then interpolated back to each scan's voxels: the peak lands near 1,
    # never above it (how near depends on where the grid peak falls between original voxels)
    assert 0.95 <= max(float(v.max()) for v in b) <= 1.0 + 1e-6
    assert all(x.shape == y.shape for x, y in zip(a, b))
    assert not all(np.allclose(x, y, atol=1e-3) for x, y in zip(a, b))
    with pytest.raises(ConfigError, match="map smoothing must be between 0 and 100 mm"):
        Analyzer(options(tiny_model_dir, map_smooth_mm=-1))


@pytest.mark.slow
def test_hlip_analyze_cli_on_real_dicom(tiny_model_dir, tmp_path):
    """pydicom's real multi-series test study through the CLI in a child process."""
    folder = dicomdir_tests_folder()
    cmd = [sys.executable, "-m", "HLIPCore.cli.main", "analyze", folder, "--model", str(tiny_model_dir),
           "--prompts", "pub_brain_5", "--out", str(tmp_path / "cli"), "--attention", "Glioma", "--device", "cpu"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "cli" / "report.json").read_text())
    assert report["scans"] and {m["class"] for m in report["maps"]} == {"Glioma"}
    assert "Doe" not in (tmp_path / "cli" / "report.json").read_text()


def test_pointing_game_looks_up_the_map_peak_in_the_mask(tiny_model_dir, study_dir, tmp_path):
    """The peak found on the original voxels is a real point of the study; a mask around it scores a hit."""
    import nibabel as nib
    from HLIPCore.training.dataset import ManifestEntry
    from HLIPCore.training.pointing import _lesion_at, hottest_point, pointing_game
    analyzer = Analyzer(options(tiny_model_dir))
    ras = hottest_point(analyzer, study_dir, ("disease", "Glioma"))
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = ras - 10.0  # a 2 mm grid whose voxel (5, 5, 5) is the peak
    hit = np.zeros((11, 11, 11), np.uint8)
    hit[4:7, 4:7, 4:7] = 1
    nib.save(nib.Nifti1Image(hit, affine), tmp_path / "hit.nii.gz")
    nib.save(nib.Nifti1Image(1 - hit, affine), tmp_path / "miss.nii.gz")
    nib.save(nib.Nifti1Image(2 * hit, affine), tmp_path / "oedema.nii.gz")  # the peak in the lesion's oedema
    assert _lesion_at(tmp_path / "hit.nii.gz", ras) and not _lesion_at(tmp_path / "miss.nii.gz", ras)
    assert not _lesion_at(tmp_path / "oedema.nii.gz", ras)
    entries = [ManifestEntry([study_dir], label="glioma", mask=tmp_path / "hit.nii.gz"),
               ManifestEntry([study_dir], label="glioma", mask=tmp_path / "miss.nii.gz"),
               ManifestEntry([study_dir], label="glioma", mask=tmp_path / "oedema.nii.gz"),
               ManifestEntry([study_dir], label="normal", mask=tmp_path / "hit.nii.gz")]
    result = pointing_game(analyzer, entries)
    # distances: 0 for the hit, 4 mm (two 2 mm voxels) to the lesion around the hole, none without lesion voxels
    assert result == {"Glioma": 1 / 3, "all": 1 / 3, "n": 3, "abnormal": {"Glioma": 2 / 3, "all": 2 / 3},
                      "distance_mm": {"Glioma": 2.0, "all": 2.0}}
    from HLIPCore.training.pointing import _look_up
    assert _look_up(tmp_path / "miss.nii.gz", ras) == (0, pytest.approx(4.0, abs=1e-6))
    assert _look_up(tmp_path / "oedema.nii.gz", ras) == (2, None)
    # the same game from the command line prints the table with the distance column
    lines = [{"study": str(study_dir), "label": "glioma", "mask": str(tmp_path / m)} for m in ("hit.nii.gz", "miss.nii.gz")]
    lines.append({"study": str(study_dir), "label": "normal"})
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    cmd = [sys.executable, "-m", "HLIPCore.cli.main", "eval", "--model", str(tiny_model_dir), "--manifest",
           str(tmp_path / "eval.jsonl"), "--prompts", "pub_brain_5", "--pointing", "--device", "cpu", "--no-progress"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "median mm to lesion" in done.stdout and "gradcam map smoothed 0 mm" in done.stdout
    bad = subprocess.run(cmd + ["--map-smooth-mm", "-1"], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert "map smoothing must be between 0 and 100 mm, not -1" in bad.stderr
    row = next(line.split() for line in done.stdout.splitlines() if line.strip().startswith("Glioma"))
    assert row[1:] == ["0.500", "0.500", "2.0"], done.stdout
    (tmp_path / "broken.nii.gz").write_bytes(b"not a nifti")  # a corrupt mask: one line naming it
    with pytest.raises(InputError, match=r"broken\.nii\.gz: unreadable lesion mask"):
        pointing_game(analyzer, [ManifestEntry([study_dir], label="glioma", mask=tmp_path / "broken.nii.gz")])


def test_single_scan_model_takes_the_scan_with_most_slices(tmp_path, tokenizer_dir, study_dir):
    """A chest-CT-like single-scan model on a two-series study: the longer series is used, the other is skipped."""
    from HLIPCore.model import create_model, get_model_config
    from HLIPCore.model.checkpoint import convert_checkpoint
    cfg = get_model_config("tiny_multiscan_h3")
    cfg["vision_cfg"]["max_num_scans"] = 1
    torch.manual_seed(0)
    model = create_model(cfg)
    torch.save(model.state_dict(), tmp_path / "single.pt")
    folder = convert_checkpoint(tmp_path / "single.pt", cfg, tmp_path / "single", tokenizer=tokenizer_dir)
    report = Analyzer(options(folder, attention="none")).analyze(study_dir, tmp_path / "out")
    assert [s["description"] for s in report["scans"]] == ["T1 AX"]  # 12 slices against T2 SAG's 10
    assert any("more than 1 scans" in k["reason"] for k in report["skipped"])
