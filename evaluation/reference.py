"""Straightforward NumPy/scikit-image implementations of the SynthRAD metric definitions.

These are the definitions written plainly (as in the challenges' public evaluation code), kept as the
yardstick that :mod:`medtrans.metrics` (the fast path) is tested and benchmarked against.
"""

from __future__ import annotations

import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from skimage.util import crop


def mae_2023(gt: np.ndarray, pred: np.ndarray, mask: np.ndarray) -> float:
    m = np.where(mask > 0, 1.0, 0.0)
    return float(np.sum(np.abs(gt * m - pred * m)) / m.sum())


def psnr_2023(gt: np.ndarray, pred: np.ndarray, mask: np.ndarray, rng=(-1024.0, 3000.0)) -> float:
    gt = np.clip(gt.astype(np.float64), *rng)
    pred = np.clip(pred.astype(np.float64), *rng)
    m = mask > 0
    if np.array_equal(gt[m], pred[m]):
        return float("inf")
    return float(peak_signal_noise_ratio(gt[m], pred[m], data_range=rng[1] - rng[0]))


def ssim_2023(gt: np.ndarray, pred: np.ndarray, mask: np.ndarray, rng=(-1024.0, 3000.0)) -> float:
    gt = np.clip(gt.astype(np.float64), *rng)
    pred = np.clip(pred.astype(np.float64), *rng)
    m = np.where(mask > 0, 1.0, 0.0)
    gt = np.where(m == 0, rng[0], gt) - rng[0]
    pred = np.where(m == 0, rng[0], pred) - rng[0]
    _, ssim_map = structural_similarity(gt, pred, data_range=rng[1] - rng[0], full=True)
    pad = 3
    return float(crop(ssim_map, pad)[crop(m, pad).astype(bool)].mean(dtype=np.float64))
