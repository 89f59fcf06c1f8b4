"""SynthRAD-exact image metrics on volumes, computed fast.

Definitions (see ``docs/metrics.md`` for citations):

``synthrad2023`` (Thummerer et al., SynthRAD2023, Med. Phys. 2023; challenge evaluation code):
    MAE over mask voxels, no clipping. PSNR with both volumes clipped to [-1024, 3000] HU over mask voxels,
    data range 4024. SSIM on the clipped volumes with outside-mask voxels set to -1024 and everything
    shifted by +1024; 7x7x7 uniform window, K1 0.01, K2 0.03, sample covariance (scikit-image
    defaults); the mean of the SSIM map over mask voxels after cropping 3 voxels at every border.

``synthrad2025`` (the challenge's evaluation code, SynthRAD2025/evaluation ``image_metrics.py``, checked against it
    to 1e-6, docs/metrics.md): range [-1024, 3071] (data range 4095); outside-mask voxels set to -1024 in both
    volumes. MAE over mask voxels, no clipping; PSNR clipped, over mask voxels. MS-SSIM over 5 scales (weights
    0.0448, 0.2856, 0.3001, 0.2363, 0.1333) with the official code's quirks: at every scale the map is
    ``L**w * C**w * S**w`` (luminance weighted too, each term clipped at 0); edge padding to at least 97 voxels per
    axis split before/after; the masked mean of each scale's map after a 3-voxel crop; images downsampled by a
    2x2x2 box over the voxel and its predecessor (zero before the first) and every other voxel kept, the mask by
    keeping every other voxel; each scale's mean clipped to [0, 1]; the product of the five.

Speed: SSIM is computed only inside the mask's bounding box plus the 3-voxel window radius, in float64
(float32 loses ~1e-4 relative accuracy in the variances at HU scale), in slabs of slices run on separate
threads (bounded memory, cache-friendly); the clip/mask/shift is done per slab. Values equal :mod:`medtrans.evaluation.reference` to ~1e-12.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import uniform_filter

WIN = 7
PAD = 3  # crop at every border, as skimage's mean of the SSIM map
MS_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


@dataclass(frozen=True)
class Protocol:
    name: str
    hu_range: tuple[float, float]
    mask_before_all: bool
    ssim: str  # "ssim" | "ms_ssim"

    @property
    def data_range(self) -> float:
        return self.hu_range[1] - self.hu_range[0]


PROTOCOLS = {
    "synthrad2023": Protocol("synthrad2023", (-1024.0, 3000.0), False, "ssim"),
    "synthrad2025": Protocol("synthrad2025", (-1024.0, 3071.0), True, "ms_ssim"),
}
#: Tissue bands of the reference CT, half-open [low, high) in HU, so that they partition the body mask.
TISSUES = {"air": (-np.inf, -200.0), "soft": (-200.0, 300.0), "bone": (300.0, np.inf)}


def _bbox(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
    box = []
    for axis, n in enumerate(mask.shape):  # projections: far cheaper than np.nonzero of the whole volume
        idx = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        box.append(slice(max(int(idx[0]) - margin, 0), min(int(idx[-1]) + 1 + margin, n)))
    return tuple(box)


#: Core slices per slab of the SSIM computation: the five float64 filter images of a slab stay a few MB, so the
#: work is cache-friendly and peak memory does not grow with the volume.
SLAB = 16


def _window_moments(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, ...]:
    """Means, variances and covariance over the 7-voxel uniform window, sample-normalized (scikit-image's)."""
    ux, uy, uxx, uyy, uxy = (uniform_filter(j, size=WIN) for j in (x, y, x * x, y * y, x * y))
    cov_norm = WIN**3 / (WIN**3 - 1.0)
    return ux, uy, cov_norm * (uxx - ux * ux), cov_norm * (uyy - uy * uy), cov_norm * (uxy - ux * uy)


def ssim_maps(x: np.ndarray, y: np.ndarray, data_range: float) -> tuple[np.ndarray, np.ndarray]:
    """SSIM and contrast-structure maps with scikit-image's default constants and sample covariance."""
    ux, uy, vx, vy, vxy = _window_moments(x, y)
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    cs = (2 * vxy + c2) / (vx + vy + c2)
    ssim = ((2 * ux * uy + c1) / (ux**2 + uy**2 + c1)) * cs
    return ssim, cs


def synthrad2025_map(x: np.ndarray, y: np.ndarray, data_range: float, weight: float) -> np.ndarray:
    """One scale's map of the SynthRAD2025 MS-SSIM: ``L**w * C**w * S**w``, each term clipped at 0.

    As the official code computes it: contrast from the square roots of the (clipped) variances over their
    unclipped sum, structure with ``C3 = C2 / 2``; C*S equals the usual contrast-structure term except that a
    negative S is clipped to 0 (so the fractional power stays real).
    """
    ux, uy, vx, vy, vxy = _window_moments(x, y)
    sx, sy = np.sqrt(np.clip(vx, 0, None)), np.sqrt(np.clip(vy, 0, None))
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    c3 = c2 / 2
    luminance = np.clip((2 * ux * uy + c1) / (ux * ux + uy * uy + c1), 0, None)
    contrast = np.clip((2 * sx * sy + c2) / (vx + vy + c2), 0, None)
    structure = np.clip((vxy + c3) / (sx * sy + c3), 0, None)
    return luminance**weight * contrast**weight * structure**weight


def _interior(mask: np.ndarray) -> np.ndarray:
    inner = np.zeros_like(mask, dtype=bool)
    core = tuple(slice(PAD, n - PAD) for n in mask.shape)
    inner[core] = mask[core]
    return inner


def masked_ssim(gt: np.ndarray, pred: np.ndarray, mask: np.ndarray, data_range: float, *, workers: int = 2,
                map_of: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
                prepare: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None) -> float:
    """Mean of the SSIM (or CS) map over mask voxels at least 3 voxels from every border.

    Only the mask's bounding box plus the window radius is filtered (outside it the map is never read), in
    slabs of :data:`SLAB` slices with a 3-slice halo, on ``workers`` threads (ndimage releases the GIL). Each
    voxel the mean reads has its whole 7-voxel window inside its slab, so the slabs give the same map.

    Args:
        gt, pred: the volumes SSIM compares (already shifted and masked, unless ``prepare`` does it).
        prepare: applied to each float64 slab and its mask slab (e.g. clip, mask, shift), so that full-volume
            float64 copies are never made.
    """
    inner = _interior(mask)
    if not inner.any():  # as the reference's mean of an empty selection
        return float("nan")
    box = _bbox(inner, WIN // 2)
    z_inner = np.flatnonzero(inner[box].any(axis=(1, 2)))
    z0, z1 = int(z_inner[0]), int(z_inner[-1]) + 1
    h = WIN // 2
    box_z0, box_z1 = box[0].start, box[0].stop

    def slab(c0: int) -> tuple[float, int]:
        c1 = min(c0 + SLAB, z1)
        lo, hi = max(box_z0 + c0 - h, 0), min(box_z0 + c1 + h, box_z1)  # halo where the volume has it
        sl = (slice(lo, hi), box[1], box[2])
        x, y = gt[sl].astype(np.float64), pred[sl].astype(np.float64)
        if prepare is not None:
            x, y = prepare(x, mask[sl]), prepare(y, mask[sl])
        chosen = ssim_maps(x, y, data_range)[0] if map_of is None else map_of(x, y)
        core = slice(box_z0 + c0 - lo, box_z0 + c1 - lo)
        sel = inner[box_z0 + c0: box_z0 + c1, box[1], box[2]]
        return float(chosen[core][sel].sum(dtype=np.float64)), int(sel.sum())

    starts = range(z0, z1, SLAB)
    if workers <= 1:
        parts = [slab(c) for c in starts]
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            parts = list(pool.map(slab, starts))
    return sum(p[0] for p in parts) / sum(p[1] for p in parts)


def _downsample(a: np.ndarray) -> np.ndarray:
    """The official downsampling: ``fftconvolve(a, ones((2, 2, 2)) / 8, mode="same")[::2, ::2, ::2]``, computed
    directly (no FFT of the whole volume): along each axis, output k averages input 2k and 2k-1, with a zero before
    the first voxel; ceil(n / 2) voxels remain."""
    for axis in range(3):
        a = np.moveaxis(a, axis, 0)
        c = (a.shape[0] + 1) // 2
        prev = np.empty((c, *a.shape[1:]))
        prev[0] = 0.0
        prev[1:] = a[1 : 2 * c - 1 : 2]
        a = np.moveaxis((a[0 : 2 * c : 2] + prev) / 2, 0, axis)
    return np.ascontiguousarray(a)


#: The official code pads every axis to at least this many voxels (four halvings leave 7, the window size).
MS_MIN_SIZE = 97


def ms_ssim(gt_shifted: np.ndarray, pred_shifted: np.ndarray, mask: np.ndarray, data_range: float,
            *, workers: int = 2) -> float:
    """Masked 3D MS-SSIM as the SynthRAD2025 evaluation code computes it (see the module docstring).

    NaN where the official code gives NaN: a scale whose mask has no voxel 3 voxels away from the border.
    """
    pad = [((MS_MIN_SIZE - n) // 2, MS_MIN_SIZE - n - (MS_MIN_SIZE - n) // 2) if n < MS_MIN_SIZE else (0, 0)
           for n in gt_shifted.shape]
    x = np.pad(gt_shifted.astype(np.float64), pad, mode="edge")
    y = np.pad(pred_shifted.astype(np.float64), pad, mode="edge")
    m = np.pad(mask.astype(bool), pad, mode="edge")
    values = []
    for level, weight in enumerate(MS_WEIGHTS):
        scale_map = functools.partial(synthrad2025_map, data_range=data_range, weight=weight)
        values.append(float(np.clip(masked_ssim(x, y, m, data_range, workers=workers, map_of=scale_map), 0.0, 1.0)))
        if level < len(MS_WEIGHTS) - 1:
            x, y, m = _downsample(x), _downsample(y), m[::2, ::2, ::2]
    return float(np.prod(values))


def compute_metrics(gt: np.ndarray, pred: np.ndarray, mask: np.ndarray, *, protocol: str = "synthrad2023",
                    workers: int = 2) -> dict[str, float]:
    """All metrics of one case: ``mae, psnr, ssim`` (or ``ms_ssim``), ``me``, ``mae_air/soft/bone``.

    Args:
        gt: reference CT in HU (any numeric dtype: read as float64 slab by slab).
        pred: synthetic CT in HU, same shape.
        mask: body mask (> 0 inside), same shape.
        protocol: ``synthrad2023`` or ``synthrad2025``.
        workers: threads for the SSIM filters.
    """
    p = PROTOCOLS[protocol]
    if gt.shape != pred.shape or gt.shape != mask.shape:
        raise ValueError(f"shape mismatch: ct {gt.shape}, sct {pred.shape}, mask {mask.shape}")
    m = mask > 0 if mask.dtype != bool else mask
    if not m.any():
        raise ValueError("the mask is empty")
    lo, hi = p.hu_range
    if p.mask_before_all:
        return _metrics_2025(gt, pred, m, p, workers)
    out = _voxel_metrics(gt, pred, m, p)

    def clipped_masked_shifted(v: np.ndarray, inside: np.ndarray) -> np.ndarray:
        return np.where(inside, np.clip(v, lo, hi), lo) - lo

    out["ssim"] = masked_ssim(gt, pred, m, p.data_range, workers=workers, prepare=clipped_masked_shifted)
    return {k: out[k] for k in ("mae", "psnr", "ssim", "me", *(f"mae_{t}" for t in TISSUES))}


#: Slices per slab of the voxel metrics: float64 copies of one slab at a time, so memory does not grow with the case.
VOXEL_SLAB = 32


def _voxel_metrics(gt: np.ndarray, pred: np.ndarray, m: np.ndarray, p: Protocol) -> dict[str, float]:
    """MAE (unclipped), PSNR (clipped), ME and the tissue MAEs inside the mask, accumulated slab by slab."""
    lo, hi = p.hu_range
    sums = {"abs": 0.0, "err": 0.0, "sq": 0.0, "n": 0}
    tissue = {name: [0.0, 0] for name in TISSUES}
    for z0 in range(0, gt.shape[0], VOXEL_SLAB):
        sl = slice(z0, z0 + VOXEL_SLAB)
        inside = m[sl]
        g, s = gt[sl][inside].astype(np.float64), pred[sl][inside].astype(np.float64)
        err = s - g
        a = np.abs(err)
        sums["abs"] += float(a.sum())
        sums["err"] += float(err.sum())
        sums["sq"] += float(np.square(np.clip(g, lo, hi) - np.clip(s, lo, hi)).sum())
        sums["n"] += int(g.size)
        for name, (t0, t1) in TISSUES.items():
            sel = (g >= t0) & (g < t1)
            tissue[name][0] += float(a[sel].sum())
            tissue[name][1] += int(sel.sum())
    n = sums["n"]
    mse = sums["sq"] / n
    out = {"mae": sums["abs"] / n, "me": sums["err"] / n,
           "psnr": float("inf") if mse == 0 else float(10 * np.log10(p.data_range**2 / mse))}
    for name, (total, count) in tissue.items():
        out[f"mae_{name}"] = total / count if count else float("nan")
    return out


def _metrics_2025(gt: np.ndarray, pred: np.ndarray, m: np.ndarray, p: Protocol, workers: int) -> dict[str, float]:
    """MAE (unclipped), PSNR (clipped) and the rest inside the mask as for 2023; MS-SSIM on the clipped, masked and
    shifted volumes."""
    lo, hi = p.hu_range
    out = _voxel_metrics(gt, pred, m, p)
    shifted = [np.where(m, np.clip(v.astype(np.float64), lo, hi), lo) - lo for v in (gt, pred)]
    out["ms_ssim"] = ms_ssim(*shifted, m, p.data_range, workers=workers)
    return {k: out[k] for k in ("mae", "psnr", "ms_ssim", "me", *(f"mae_{t}" for t in TISSUES))}
