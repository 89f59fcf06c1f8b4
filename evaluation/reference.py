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


# SynthRAD2025 (the challenge's evaluation code, SynthRAD2025/evaluation image_metrics.py, restated plainly)
RANGE_2025 = (-1024.0, 3071.0)
WEIGHTS_2025 = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def _masked_2025(gt: np.ndarray, pred: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    m = np.where(mask > 0, 1.0, 0.0)
    return np.where(m == 0, -1024.0, gt.astype(np.float64)), np.where(m == 0, -1024.0, pred.astype(np.float64)), m


def mae_2025(gt: np.ndarray, pred: np.ndarray, mask: np.ndarray) -> float:
    g, p, m = _masked_2025(gt, pred, mask)
    return float(np.sum(np.abs(g * m - p * m)) / m.sum())


def psnr_2025(gt: np.ndarray, pred: np.ndarray, mask: np.ndarray) -> float:
    g, p, m = _masked_2025(gt, pred, mask)
    g, p = np.clip(g, *RANGE_2025)[m == 1], np.clip(p, *RANGE_2025)[m == 1]
    if np.array_equal(g, p):
        return float("inf")
    return float(peak_signal_noise_ratio(g, p, data_range=RANGE_2025[1] - RANGE_2025[0]))


def _scale_map_2025(x: np.ndarray, y: np.ndarray, weight: float, data_range: float) -> np.ndarray:
    from scipy.ndimage import uniform_filter

    win = 7
    ux, uy = uniform_filter(x, size=win), uniform_filter(y, size=win)
    norm = win**3 / (win**3 - 1)
    vx = norm * (uniform_filter(x * x, size=win) - ux * ux)
    vy = norm * (uniform_filter(y * y, size=win) - uy * uy)
    vxy = norm * (uniform_filter(x * y, size=win) - ux * uy)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    sx, sy = np.clip(vx, 0, None) ** 0.5, np.clip(vy, 0, None) ** 0.5
    lum = np.clip((2 * ux * uy + c1) / (ux * ux + uy * uy + c1), 0, None)
    con = np.clip((2 * sx * sy + c2) / (vx + vy + c2), 0, None)
    struct = np.clip((vxy + c2 / 2) / (sx * sy + c2 / 2), 0, None)
    return (lum**weight) * (con**weight) * (struct**weight)


def ms_ssim_2025(gt: np.ndarray, pred: np.ndarray, mask: np.ndarray) -> float:
    """Full volumes, FFT downsampling, the official order of operations (NaN where a scale's cropped mask is empty)."""
    from scipy.signal import fftconvolve

    lo, hi = RANGE_2025
    m = np.where(mask > 0, 1.0, 0.0)
    g = np.where(m == 0, lo, np.clip(gt.astype(np.float64), lo, hi)) - lo
    p = np.where(m == 0, lo, np.clip(pred.astype(np.float64), lo, hi)) - lo
    pad = [(max((97 - n) // 2, 0), max(97 - n - (97 - n) // 2, 0)) for n in g.shape]
    g, p, m = (np.pad(a, pad, mode="edge") for a in (g, p, m))
    box = np.ones((2, 2, 2)) / 8
    means = []
    for level, w in enumerate(WEIGHTS_2025):
        scale_map = _scale_map_2025(g, p, w, hi - lo)
        with np.errstate(invalid="ignore"):
            means.append(crop(scale_map, 3)[crop(m, 3).astype(bool)].mean(dtype=np.float64))
        if level < len(WEIGHTS_2025) - 1:
            g, p = (fftconvolve(a, box, mode="same") for a in (g, p))
            g, p, m = g[::2, ::2, ::2], p[::2, ::2, ::2], m[::2, ::2, ::2]
    return float(np.prod(np.clip(means, 0, 1)))
