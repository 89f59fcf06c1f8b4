"""The SynthRAD image metrics, as evaluation reports them. The kernels live in :mod:`medtrans.metrics`, below both
training (whose validation scores with them) and evaluation, so that neither imports the other."""

from __future__ import annotations

from medtrans.metrics import (
    MS_WEIGHTS,
    PAD,
    PROTOCOLS,
    SLAB,
    TISSUES,
    VOXEL_SLAB,
    WIN,
    Protocol,
    compute_metrics,
    masked_ssim,
    ms_ssim,
    ssim_maps,
)

__all__ = ["MS_WEIGHTS", "PAD", "PROTOCOLS", "SLAB", "TISSUES", "VOXEL_SLAB", "WIN", "Protocol", "compute_metrics",
           "masked_ssim", "ms_ssim", "ssim_maps"]
