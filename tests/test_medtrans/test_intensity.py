"""Intensity normalization: one function for training and inference, its statistics bounded by a sample."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from medtrans.intensity import MAX_STATISTICS_VOXELS, MRNormalization, normalize_mr, statistics_sample


def test_statistics_of_a_large_volume_come_from_a_bounded_sample_and_agree_with_all_voxels():
    rng = np.random.default_rng(1)
    shape = (80, 256, 256)  # 5.2 M voxels: sampled every 2nd
    _z, y, x = np.ogrid[:80, :256, :256]
    body = ((x - 128) / 90.0) ** 2 + ((y - 128) / 100.0) ** 2 < 1
    arr = np.where(body, rng.gamma(9.0, 50.0, shape), np.abs(rng.normal(0, 8, shape))).astype(np.float32)
    assert statistics_sample(arr).size <= MAX_STATISTICS_VOXELS < arr.size
    img = sitk.GetImageFromArray(arr)
    _, stats = normalize_mr(img, MRNormalization())
    from skimage.filters import threshold_otsu

    nz = arr[arr > 0]
    exact = float(np.percentile(nz[nz > threshold_otsu(nz)], 99.5))  # every voxel
    assert abs(stats["high"] - exact) / exact < 0.01, (stats["high"], exact)


def test_small_volumes_use_every_voxel():
    arr = np.arange(1000, dtype=np.float32).reshape(10, 10, 10)
    assert statistics_sample(arr).size == 1000
    out, stats = normalize_mr(sitk.GetImageFromArray(arr), MRNormalization())
    assert stats["background"] == -1.0 and sitk.GetArrayViewFromImage(out).max() <= 5.0
