"""Synthetic brain MRI "phantom" studies with known truth, for proving the training and zero-shot chain.

Built on real anatomy (the MNI152 2009c template and GM/WM maps shipped inside nilearn, read offline), each study
has 2-5 MR series (T1, T2, FLAIR, T1c, DWI), each on its own grid (plane, tilt, spacing, field of view, slice
count), sometimes with a localizer or a junk series, one of the Pub-Brain-5 classes (normal, stroke, glioma,
meningioma, metastasis) with a ground-truth mask, and a free-text report that agrees with it.

    study = generate_study(seed=7, label="glioma")          # in memory: study.series, .world_mask, .report
    paths = write_study(study, "out/phantom_7")             # DICOM + NIfTI + masks + report.txt
    manifest = generate_dataset(100, seed=0, out_dir="out")  # balanced labels, labels.csv, manifest.jsonl
"""
from .dataset import balanced_labels, generate_dataset, study_seed
from .lesions import LABELS
from .study import PhantomConfig, PhantomSeries, PhantomStudy, generate_study
from .writer import write_study

__all__ = ["LABELS", "PhantomConfig", "PhantomSeries", "PhantomStudy", "generate_study", "write_study",
           "generate_dataset", "balanced_labels", "study_seed"]
