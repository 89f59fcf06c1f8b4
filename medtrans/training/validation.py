"""Validation during training: whole validation volumes through the inference code, scored with the metric kernels
the evaluation reports (:mod:`medtrans.metrics`)."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from medtrans.calibration import fit_calibration
from medtrans.inference import Predictor
from medtrans.metrics import compute_metrics
from medtrans.prepared import PreparedDataset


def validate(predictor: Predictor, dataset: PreparedDataset, cases: list[str]) -> dict[str, float]:
    """Mean MAE/PSNR/SSIM (HU, inside the body mask) of the predictor on the ``cases`` of ``dataset``."""
    rows = []
    for name in cases:
        case = dataset.case(name)
        ct, mask, mr = case.arrays()
        sct = sitk.GetArrayFromImage(predictor.predict_image(mr))
        rows.append(compute_metrics(ct, sct, mask))
    return {k: float(np.mean([r[k] for r in rows])) for k in ("mae", "psnr", "ssim")}


#: Voxels per validation case that enter the error calibration (a seeded sample: memory stays bounded).
CALIBRATION_SAMPLES = 100_000


def fit_error_calibration(predictor: Predictor, dataset: PreparedDataset, cases: list[str], *,
                          seed: int = 0) -> dict:
    """The calibration of the predictor's error output (:mod:`medtrans.calibration`) on held-out ``cases``: what
    convert then applies, fitted on the same passes convert runs (``Predictor.predict_with_error``)."""
    rng = np.random.default_rng(seed)
    predicted, measured, sct_hu = [], [], []
    for name in cases:
        ct, mask, mr = dataset.case(name).arrays()
        sct, error = (sitk.GetArrayFromImage(img) for img in predictor.predict_with_error(mr))
        inside = np.flatnonzero(mask)
        if inside.size > CALIBRATION_SAMPLES:
            inside = rng.choice(inside, CALIBRATION_SAMPLES, replace=False)
        predicted.append(error.ravel()[inside])
        measured.append(np.abs(sct.ravel()[inside] - ct.ravel()[inside].astype(np.float32)))
        sct_hu.append(sct.ravel()[inside])
    table = fit_calibration(np.concatenate(predicted), np.concatenate(measured), np.concatenate(sct_hu))
    table["cases"] = len(cases)
    return table
