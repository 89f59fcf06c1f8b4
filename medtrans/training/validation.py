"""Validation during training: whole validation volumes through the inference code, scored with the metric kernels
the evaluation reports (:mod:`medtrans.metrics`)."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

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
