"""Phantom studies: determinism, balanced labels, geometry variety, masks aligned with the images, DICOM/NIfTI that
`load_study` reads back into the generated scans (junk and localizers skipped), reports that agree with the truth,
and the `hlip phantoms` command."""
import csv
import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage, stats

pytest.importorskip("nilearn", reason="the phantoms need the MNI152 template shipped with nilearn")

from HLIPCore.data import load_study  # noqa: E402
from HLIPCore.phantoms import LABELS, PhantomConfig, balanced_labels, generate_dataset, generate_study  # noqa: E402
from HLIPCore.phantoms.anatomy import load_anatomy  # noqa: E402
from HLIPCore.phantoms.reports import make_report  # noqa: E402
from HLIPCore.phantoms.sequences import SHOWS  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SMALL = PhantomConfig.sized("small")
LABEL_WORDS = {"stroke": ("stroke", "infarct"), "glioma": ("glioma", "glioblastoma"), "meningioma": ("meningioma",),
               "metastasis": ("metastas",)}
NORMAL_WORDS = ("no acute", "no significant", "normal", "unremarkable")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("phantoms")
    manifest = generate_dataset(10, seed=3, out_dir=out, config=SMALL)
    entries = [json.loads(line) for line in manifest.read_text().splitlines()]
    return out, entries


@pytest.fixture(scope="module")
def studies():
    """One in-memory study per abnormal label, plus a normal one (small grids)."""
    return {label: generate_study(11 + n, label, SMALL) for n, label in enumerate(LABELS)}


def _section(report: str, name: str) -> str:
    return report.split(name + ":", 1)[1].split("\n\n")[0].lower()


# ---------------------------------------------------------------------------------------------------------------
# determinism and labels

def test_same_seed_same_study_and_files(tmp_path):
    a, b = generate_study(5, "glioma", SMALL), generate_study(5, "glioma", SMALL)
    assert a.report == b.report and len(a.series) == len(b.series)
    for sa, sb in zip(a.images, b.images):
        np.testing.assert_array_equal(sa.array, sb.array)
        np.testing.assert_array_equal(sa.affine, sb.affine)
        np.testing.assert_array_equal(sa.mask, sb.mask)
    c = generate_study(6, "glioma", SMALL)
    assert c.report != a.report and not np.array_equal(c.world_mask, a.world_mask)

    for name in ("one", "two"):
        generate_dataset(1, seed=9, out_dir=tmp_path / name, config=SMALL)
    files = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*") if p.is_file())
    assert len(files) > 20
    for rel in files:
        assert (tmp_path / "one" / rel).read_bytes() == (tmp_path / "two" / rel).read_bytes(), rel


def test_labels_are_balanced(dataset):
    out, entries = dataset
    assert Counter(e["label"] for e in entries) == {label: 2 for label in LABELS}
    counts = Counter(balanced_labels(13, seed=1))
    assert max(counts.values()) - min(counts.values()) <= 1 and sum(counts.values()) == 13
    assert balanced_labels(13, seed=1) != balanced_labels(13, seed=2)  # shuffled by the seed
    rows = list(csv.DictReader(open(out / "labels.csv")))
    assert [r["label"] for r in rows] == [e["label"] for e in entries]
    assert all((out / r["study"]).is_dir() and (out / r["report"]).is_file() for r in rows)


# ---------------------------------------------------------------------------------------------------------------
# geometry

def test_series_geometry_varies(dataset):
    out, entries = dataset
    planes, counts, spacings, sequences = Counter(), set(), set(), Counter()
    mixed_study = False
    for e in entries:
        assert 2 <= len(e["series"]) <= 5
        assert set(s["sequence"] for s in e["series"]) & set(SHOWS[e["label"]])  # shows its pathology
        for s in e["series"]:
            planes[s["plane"]] += 1
            counts.add(s["shape"][0])
            spacings.add(tuple(s["spacing"]))
            sequences[s["sequence"]] += 1
        mixed_study |= len({(s["plane"], tuple(s["shape"])) for s in e["series"]}) > 1
    assert set(planes) == {"axial", "sagittal", "coronal"}
    assert set(sequences) == {"T1", "T2", "FLAIR", "T1c", "DWI"}
    assert len(counts) >= 4 and len(spacings) >= 8 and mixed_study
    assert any(e["non_image_series"] for e in entries)  # some localizer or junk series


def test_obliquity_and_grids_differ_within_a_study(studies):
    tilted = [s.geometry.oblique_deg for st in studies.values() for s in st.images]
    assert any(t > 1.0 for t in tilted) and any(t == 0.0 for t in tilted)
    for st in studies.values():
        assert len({tuple(np.round(s.affine, 3).ravel()) for s in st.images}) == len(st.images)


# ---------------------------------------------------------------------------------------------------------------
# masks

def _series_index(affine, points):
    """Nearest voxel (i, j, k) of RAS points (einsum: BLAS matmul is slow for (N, 3) x (3, 3) on a busy machine)."""
    return np.rint(np.einsum("nd,id->ni", points - affine[:3, 3], np.linalg.inv(affine[:3, :3]))).astype(int)


def _voxel_centres(shape, affine):
    k, j, i = np.meshgrid(*(np.arange(n, dtype=float) for n in shape), indexing="ij")
    ijk = np.stack([i, j, k], axis=-1).reshape(-1, 3)
    return np.einsum("nd,id->ni", ijk, affine[:3, :3]) + affine[:3, 3]


def test_series_masks_match_the_world_mask(studies):
    for st in studies.values():
        world = st.world_mask
        for s in st.images:
            points = _voxel_centres(s.mask.shape, s.affine)
            idx = _series_index(st.world_affine, points)   # (i, j, k) on the world grid
            inside = np.all((idx >= 0) & (idx < np.array(world.shape[::-1])), axis=1)
            expected = np.zeros(len(points), np.uint8)
            expected[inside] = world[idx[inside, 2], idx[inside, 1], idx[inside, 0]]
            got = s.mask.reshape(-1)
            assert np.mean(got == expected) > 0.999, (st.label, s.sequence)
            if expected.any():
                assert np.mean(got[expected > 0] == expected[expected > 0]) > 0.97


def _mirrored_values(series, label_value):
    """Intensities inside the series mask and at the mirror image (across the MNI midline x = 0) of those voxels."""
    shape = series.mask.shape
    flat = np.flatnonzero(series.mask.reshape(-1) == label_value if label_value else series.mask.reshape(-1) > 0)
    points = _voxel_centres(shape, series.affine)[flat]
    mirrored = points * np.array([-1.0, 1.0, 1.0])
    idx = _series_index(series.affine, mirrored)
    ok = np.all((idx >= 0) & (idx < np.array(shape[::-1])), axis=1)
    values = series.array.reshape(-1)[flat[ok]]
    mirror = series.array[idx[ok, 2], idx[ok, 1], idx[ok, 0]]
    return values, mirror


# (label, sequence) -> (mask value compared (0 = any), statistic, expected direction)
SIGNATURES = {
    ("stroke", "DWI"): (1, "mean", +1), ("stroke", "FLAIR"): (1, "mean", +1), ("stroke", "T2"): (1, "mean", +1),
    ("glioma", "FLAIR"): (0, "mean", +1), ("glioma", "T2"): (0, "mean", +1), ("glioma", "T1c"): (1, "p95", +1),
    ("glioma", "T1"): (1, "mean", -1),
    ("meningioma", "T1c"): (1, "mean", +1),
    ("metastasis", "T1c"): (1, "p95", +1), ("metastasis", "FLAIR"): (0, "mean", +1),
}


def test_lesions_show_where_their_signature_is_defined():
    checked = Counter()
    config = PhantomConfig.sized("small", n_sequences=(5, 5), p_localizer=0.0, p_junk=0.0)
    for seed in (40, 41, 42):
        for label in LABELS[1:]:
            st = generate_study(seed, label, config)
            for s in st.images:
                rule = SIGNATURES.get((label, s.sequence))
                if rule is None or (s.mask > 0).sum() < 4:
                    continue
                if (label, s.sequence) == ("glioma", "T1c") and not st.findings["necrosis"]:
                    continue  # a lower-grade glioma enhances only faintly, as the report says
                value, stat, direction = rule
                lesion, mirror = _mirrored_values(s, value)
                if len(lesion) < 4:
                    continue
                if stat == "mean":
                    p = stats.mannwhitneyu(lesion, mirror, alternative="greater" if direction > 0 else "less").pvalue
                    assert p < 1e-3, (seed, label, s.sequence, p)
                else:
                    assert np.percentile(lesion, 95) > 1.2 * np.percentile(mirror, 95), (seed, label, s.sequence)
                checked[label] += 1
    assert all(checked[label] >= 3 for label in LABELS[1:]), checked


def test_lesion_shapes(studies):
    anatomy = load_anatomy(SMALL.grid_mm)
    to_xyz = lambda m: m.transpose(2, 1, 0)
    mening = to_xyz(studies["meningioma"].world_mask) == 1
    assert (ndimage.binary_dilation(mening, iterations=2) & anatomy.dura).any()   # dural-based
    assert not (mening & ~anatomy.intracranial).any()                              # but not in the skull
    mets = to_xyz(studies["metastasis"].world_mask) == 1
    assert 2 <= ndimage.label(mets)[1] <= 6
    assert studies["metastasis"].findings["count"] == ndimage.label(mets)[1]
    glioma = to_xyz(studies["glioma"].world_mask)
    assert (glioma == 1).sum() > 50 and (glioma == 2).sum() > 50                   # mass with oedema around it
    assert not studies["normal"].world_mask.any()
    stroke = studies["stroke"]
    x = (np.argwhere(to_xyz(stroke.world_mask) == 1) @ stroke.world_affine[:3, :3].T + stroke.world_affine[:3, 3])[:, 0]
    assert np.all(np.sign(x) == (1 if stroke.findings["side"] == "right" else -1))  # one hemisphere


# ---------------------------------------------------------------------------------------------------------------
# files

def test_dicom_and_nifti_load_into_the_generated_scans(dataset):
    import nibabel as nib
    out, entries = dataset
    for e in entries[:6]:
        st = generate_study(e["seed"], e["label"], SMALL, study_id=e["study_id"])
        loaded = load_study(out / e["study"])
        assert len(loaded.scans) == len(st.images) == len(e["series"])
        in_memory = st.to_study().scans
        for scan, series, meta, mem in zip(loaded.scans, st.images, e["series"], in_memory):
            np.testing.assert_array_equal(mem.array, scan.array)
            assert scan.modality == "MR" and scan.description == series.description
            np.testing.assert_allclose(scan.affine, series.affine, atol=1e-3)
            np.testing.assert_array_equal(scan.array, series.array)
            mask = nib.load(out / meta["mask"])
            np.testing.assert_allclose(mask.affine, scan.affine, atol=1e-3)
            assert mask.shape == scan.shape[::-1]
            nifti = load_study(out / meta["nifti"]).scans[0]
            np.testing.assert_allclose(nifti.affine, series.affine, atol=1e-4)
            np.testing.assert_allclose(nifti.array, series.array, atol=1e-3)
        others = e["non_image_series"]
        assert bool(loaded.skipped) == bool(others)
        for skipped in loaded.skipped:
            assert re.search(r"localizer|2D image|not an image", skipped.reason), skipped
        world = nib.load(out / e["mask"])
        assert world.shape == st.world_mask.shape[::-1]


def test_dicom_headers_are_synthetic_and_scanner_like(dataset):
    import pydicom
    out, entries = dataset
    number = entries[0]["series"][0]["series_number"]
    folder = next((out / entries[0]["study"]).glob(f"S{number:04d}_*"))
    files = sorted(p for p in folder.iterdir() if p.is_file())
    assert len(files) == entries[0]["series"][0]["shape"][0]  # one file per slice
    ds = pydicom.dcmread(files[-1])
    assert str(ds.PatientName).startswith("PHANTOM^") and ds.PatientBirthDate == ""
    for key in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness",
                "SeriesInstanceUID", "SeriesDescription", "RescaleSlope", "RescaleIntercept"):
        assert key in ds, key
    assert ds.Modality == "MR" and ds.BitsAllocated == 16


# ---------------------------------------------------------------------------------------------------------------
# reports

def test_reports_agree_with_label_side_and_size(dataset):
    out, entries = dataset
    for e in entries:
        report, f = e["report"], e["findings"]
        impression, findings = _section(report, "IMPRESSION"), _section(report, "FINDINGS")
        others = [w for label, words in LABEL_WORDS.items() if label != e["label"] for w in words]
        assert not any(w in impression for w in others), (e["label"], impression)
        if e["label"] == "normal":
            assert any(w in impression for w in NORMAL_WORDS), impression
            continue
        assert any(w in impression for w in LABEL_WORDS[e["label"]]), (e["label"], impression)
        side = f["side"]
        assert side in impression or side in findings
        if side != "bilateral":
            opposite = {"left": "right", "right": "left"}[side]
            assert opposite not in findings.split(".")[0], findings  # the lesion sentence names its own side
        sizes = {f"{f['max_mm']:.0f} mm"} | {f"{v / 10:.1f}" for v in f["size_mm"]}
        assert any(s in findings for s in sizes), (sizes, findings)
    assert len({e["report"] for e in entries}) == len(entries)


def test_impressions_use_the_prompt_words():
    """Zero-shot prompts are the Pub-Brain-5 words; each class's word must occur in some of its impressions
    (the text tower only learns words its reports use: "metastases" alone left "Metastasis" unlearnt)."""
    from HLIPCore.prompts import load_prompt_set
    disease = load_prompt_set("pub_brain_5").task("disease")
    words = {c.name.lower(): rf"\b{re.escape(c.prompts[0].lower())}\b" for c in disease.classes}
    assert sorted(words) == sorted(LABELS)
    for label, pattern in words.items():
        st = generate_study(5, label, SMALL)
        seqs = [(s.sequence, s.geometry.plane) for s in st.images]
        found = [bool(re.search(pattern, _section(make_report(st.findings, seqs, np.random.default_rng(i)),
                                                  "IMPRESSION").lower())) for i in range(40)]
        assert any(found), label


def test_impressions_use_the_template_words():
    """The words of the zero-shot template ("This MRI study shows: {}.") occur in every class's impressions: a
    from-scratch text tower met "study" and "shows" nowhere else, so the template's sub-word pieces outweighed the
    one-word prompt in a mean-pooled embedding."""
    from HLIPCore.phantoms.reports import LEAD_INS
    from HLIPCore.prompts import load_prompt_set
    template = load_prompt_set("pub_brain_5").templates[0]
    words = re.findall(r"[a-z]+", template.replace("{}", "").lower())
    assert words == ["this", "mri", "study", "shows"]
    for label in LABELS:
        st = generate_study(5, label, SMALL)
        seqs = [(s.sequence, s.geometry.plane) for s in st.images]
        impressions = [make_report(st.findings, seqs, np.random.default_rng(i)).split("IMPRESSION:", 1)[1].strip()
                       for i in range(40)]
        seen = set().union(*(re.findall(r"[a-z]+", text.lower()) for text in impressions))
        assert set(words) <= seen, (label, set(words) - seen)
        led = [t for t in impressions if t.startswith(LEAD_INS)]
        assert 0 < len(led) < len(impressions), label   # a lead-in sometimes, not always
        assert all(t.split(" shows ", 1)[1][0].islower() for t in led)  # "shows acute stroke", not "shows Acute"


def test_report_wording_varies():
    st = generate_study(21, "stroke", SMALL)
    seqs = [(s.sequence, s.geometry.plane) for s in st.images]
    texts = {make_report(st.findings, seqs, np.random.default_rng(i)) for i in range(30)}
    impressions = {_section(t, "IMPRESSION") for t in texts}
    assert len(texts) >= 25 and len(impressions) >= 3
    normal = [make_report({"label": "normal"}, [("T1", "axial"), ("DWI", "axial"), ("T1c", "axial")],
                          np.random.default_rng(i)) for i in range(30)]
    assert len({_section(t, "IMPRESSION") for t in normal}) >= 4
    assert any(re.search(r"\bno (evidence of )?(intracranial )?ha?emorrhage", t.lower()) for t in normal)
    british = ["haemorrhag" in t for t in texts]
    assert any(british) and not all(british)   # both spellings occur


# ---------------------------------------------------------------------------------------------------------------
# command line

def test_manifest_says_which_series_show_the_finding(dataset):
    """`series_shows` (one flag per scan file, for the token loss) follows the sequences that carry each label's
    signature, and every abnormal study shows its finding on at least one series."""
    from HLIPCore.phantoms.sequences import SHOWS
    _, entries = dataset
    for e in entries:
        sequences = [s["sequence"] for s in e["series"]]
        assert len(e["series_shows"]) == len(e["nifti"]) == len(sequences)
        assert e["series_shows"] == [s["shows_finding"] for s in e["series"]]
        if e["label"] == "normal":
            assert not any(e["series_shows"])
        else:
            assert e["series_shows"] == [q in SHOWS[e["label"]] for q in sequences] and any(e["series_shows"])


def test_cli_writes_a_manifest(tmp_path):
    out = tmp_path / "cli"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "HLIPCore.cli.main", "phantoms", "--n", "2", "--seed", "1",
                           "--out", str(out), "--size", "small", "--format", "nifti", "--labels", "glioma,normal"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    entries = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert sorted(e["label"] for e in entries) == ["glioma", "normal"]
    assert all(e["nifti"] and (out / e["nifti"][0]).is_file() and (out / e["mask"]).is_file() for e in entries)
    assert not any((out / "studies").rglob("*.dcm"))
    bad = subprocess.run([sys.executable, "-m", "HLIPCore.cli.main", "phantoms", "--n", "1", "--out", str(out),
                          "--labels", "tumour"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "tumour" in bad.stderr
