"""SynthRAD-exact image metrics on volumes, computed fast.

Definitions (see ``docs/metrics.md`` for citations):

``synthrad2023`` (Thummerer et al., SynthRAD2023, Med. Phys. 2023; challenge evaluation code):
    MAE over mask voxels, no clipping. PSNR with both volumes clipped to [-1024, 3000] HU over mask voxels,
    data range 4024. SSIM on the clipped volumes with outside-mask voxels set to -1024 and everything
    shifted by +1024; 7x7x7 uniform window, K1 0.01, K2 0.03, sample covariance (scikit-image
    defaults); the mean of the SSIM map over mask voxels after cropping 3 voxels at every border.

``synthrad2025``: range [-1024, 3071] (data range 4095); outside-mask voxels set to -1024 in both volumes
    before every metric; MS-SSIM over 5 scales (weights 0.0448, 0.2856, 0.3001, 0.2363, 0.1333),
    2x2x2 mean downsampling, edge padding to at least 97 voxels per axis, masked means with a crop of 3
    (dropped at a coarse scale whose cropped mask would be empty),
    per-scale values clipped to [0, 1]; contrast-structure at the four finer scales, full SSIM at the
    coarsest (Wang et al. 2003), product of the weighted powers.

Speed: SSIM is computed only inside the mask's bounding box plus the 3-voxel window radius, in float64
(float32 loses ~1e-4 relative accuracy in the variances at HU scale), in slabs of slices run on separate
threads (bounded memory, cache-friendly); the clip/mask/shift is done per slab. Values equal :mod:`medtrans.evaluation.reference` to ~1e-12.
"""

from __future__ import annotations

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


def ssim_maps(x: np.ndarray, y: np.ndarray, data_range: float) -> tuple[np.ndarray, np.ndarray]:
    """SSIM and contrast-structure maps with scikit-image's default constants and sample covariance."""
    ux, uy, uxx, uyy, uxy = (uniform_filter(j, size=WIN) for j in (x, y, x * x, y * y, x * y))
    cov_norm = WIN**3 / (WIN**3 - 1.0)
    vx = cov_norm * (uxx - ux * ux)
    vy = cov_norm * (uyy - uy * uy)
    vxy = cov_norm * (uxy - ux * uy)
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    cs = (2 * vxy + c2) / (vx + vy + c2)
    ssim = ((2 * ux * uy + c1) / (ux**2 + uy**2 + c1)) * cs
    return ssim, cs


def _interior(mask: np.ndarray) -> np.ndarray:
    inner = np.zeros_like(mask, dtype=bool)
    core = tuple(slice(PAD, n - PAD) for n in mask.shape)
    inner[core] = mask[core]
    return inner


def masked_ssim(gt: np.ndarray, pred: np.ndarray, mask: np.ndarray, data_range: float, *, workers: int = 2,
                which: str = "ssim", uncropped_if_empty: bool = False,
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
    if not inner.any() and uncropped_if_empty:
        inner = mask.astype(bool)  # MS-SSIM's coarsest scales can be thinner than the 3-voxel crop
    if not inner.any():
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
        ssim, cs = ssim_maps(x, y, data_range)
        chosen = ssim if which == "ssim" else cs
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
    s = tuple(n - n % 2 for n in a.shape)
    a = a[: s[0], : s[1], : s[2]]
    return a.reshape(s[0] // 2, 2, s[1] // 2, 2, s[2] // 2, 2).mean(axis=(1, 3, 5))


def ms_ssim(gt_shifted: np.ndarray, pred_shifted: np.ndarray, mask: np.ndarray, data_range: float,
            *, workers: int = 2) -> float:
    """Masked 3D MS-SSIM (SynthRAD2025 definition, see the module docstring)."""
    pad = [(0, max(0, 97 - n)) for n in gt_shifted.shape]
    x = np.pad(gt_shifted.astype(np.float64), pad, mode="edge")
    y = np.pad(pred_shifted.astype(np.float64), pad, mode="edge")
    m = np.pad(mask.astype(np.float64), pad, mode="edge")
    values = []
    for level in range(len(MS_WEIGHTS)):
        which = "ssim" if level == len(MS_WEIGHTS) - 1 else "cs"
        mb = m > 0.5
        v = (masked_ssim(x, y, mb, data_range, workers=workers, which=which, uncropped_if_empty=True)
             if mb.any() else float("nan"))
        values.append(float(np.clip(v, 0.0, 1.0)))
        if level < len(MS_WEIGHTS) - 1:
            x, y, m = _downsample(x), _downsample(y), _downsample(m)
    return float(np.prod([v**w for v, w in zip(values, MS_WEIGHTS, strict=True)]))


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
    lo, hi = p.hu_range
    gm_all = np.where(m, np.clip(gt.astype(np.float64), lo, hi), lo)
    sm_all = np.where(m, np.clip(pred.astype(np.float64), lo, hi), lo)
    gm, sm = gm_all[m], sm_all[m]
    err = sm - gm
    out: dict[str, float] = {"mae": float(np.abs(err).mean())}
    mse = float(np.mean((gm - sm) ** 2))
    out["psnr"] = float("inf") if mse == 0 else float(10 * np.log10(p.data_range**2 / mse))
    out["ms_ssim"] = ms_ssim(gm_all - lo, sm_all - lo, m, p.data_range, workers=workers)
    out["me"] = float(err.mean())
    for name, (a, b) in TISSUES.items():
        sel = (gm >= a) & (gm < b)
        out[f"mae_{name}"] = float(np.abs(err[sel]).mean()) if sel.any() else float("nan")
    return out
