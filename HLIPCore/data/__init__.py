"""Study reading (DICOM folders, DICOMDIR, NIfTI, NRRD), scan selection and model preprocessing.

Conventions: `Scan.array` is (K, J, I) = (slices, rows, columns) like Slicer's arrayFromVolume; `Scan.affine`
maps (i, j, k, 1) to RAS millimetres like Slicer's IJKToRAS.
"""
from .study import LoadOptions, Scan, SkippedSeries, Study
from .loader import load_study
from .select import ScanSelection, select_scans
from .preprocess import (PreparedScan, PreparedStudy, PreprocessConfig, model_preprocess_config, preprocess_scan,
                         preprocess_study)

__all__ = ["LoadOptions", "Scan", "SkippedSeries", "Study", "load_study", "ScanSelection", "select_scans",
           "PreprocessConfig", "model_preprocess_config", "PreparedScan", "PreparedStudy", "preprocess_scan", "preprocess_study"]
