"""Metrics equal the plain reference definitions; edge cases do not crash."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import shared_path

from medtrans.evaluation import reference as ref
from medtrans.evaluation.metrics import compute_metrics


def check_equal(gt, pred, mask):
    fast = compute_metrics(gt, pred, mask)
    assert fast["mae"] == pytest.approx(ref.mae_2023(gt, pred, mask), rel=1e-6)
    assert fast["psnr"] == pytest.approx(ref.psnr_2023(gt, pred, mask), rel=1e-6)
    assert fast["ssim"] == pytest.approx(ref.ssim_2023(gt, pred, mask), rel=1e-6)
    return fast


@pytest.mark.parametrize("seed", [0, 1])
def test_random_volumes_match_reference(seed):
    rng = np.random.default_rng(seed)
    gt = rng.normal(0, 600, (40, 50, 45)).astype(np.float32)
    pred = gt + rng.normal(30, 150, gt.shape).astype(np.float32)
    pred[0, 0, 0] = 5000  # outside the PSNR range: clipped there, not in MAE
    mask = np.zeros(gt.shape, np.uint8)
    mask[2:38, 8:45, 1:44] = 1  # touches the border region that SSIM crops
    check_equal(gt, pred, mask)


@pytest.mark.parametrize("slab", [1, 4, 7, 100])
def test_slabs_give_the_reference_ssim(monkeypatch, slab):
    """SSIM in slabs (any slab size, the mask touching the first and last slice, holes) equals the whole map."""
    from medtrans.evaluation import metrics

    monkeypatch.setattr(metrics, "SLAB", slab)
    rng = np.random.default_rng(2)
    gt = rng.normal(0, 600, (23, 30, 28)).astype(np.float32)
    pred = gt + rng.normal(0, 200, gt.shape).astype(np.float32)
    mask = (rng.random(gt.shape) > 0.3).astype(np.uint8)
    mask[:, :3] = 0
    got = compute_metrics(gt, pred, mask, workers=2)["ssim"]
    assert got == pytest.approx(ref.ssim_2023(gt, pred, mask), rel=1e-10)


def test_shared_real_ct_with_perturbed_copies():
    ct = sitk.GetArrayFromImage(sitk.ReadImage(str(shared_path("totalsegmentator_examples", "example_ct_sm.nii.gz"))))
    ct = ct.astype(np.float32)
    mask = (ct > -400).astype(np.uint8)
    rng = np.random.default_rng(0)
    for pert in (ct + rng.normal(0, 50, ct.shape), ct * 1.05 + 20, np.roll(ct, 1, axis=1)):
        fast = check_equal(ct, pert.astype(np.float32), mask)
        assert 0 < fast["ssim"] < 1 and fast["mae"] > 0


def test_identical_volumes():
    gt = np.random.default_rng(0).normal(0, 500, (20, 20, 20))
    mask = np.ones(gt.shape)
    m = compute_metrics(gt, gt.copy(), mask)
    assert m["mae"] == 0 and m["ssim"] == pytest.approx(1.0) and m["psnr"] == float("inf")
    assert compute_metrics(gt, gt.copy(), mask, protocol="synthrad2025")["ms_ssim"] == pytest.approx(1.0)


def test_tissue_classes_and_bias():
    gt = np.full((12, 12, 12), 0.0)
    gt[:4] = -900
    gt[8:] = 1000
    pred = gt + 10
    m = compute_metrics(gt, pred, np.ones_like(gt))
    assert m["me"] == pytest.approx(10) and m["mae_air"] == m["mae_soft"] == m["mae_bone"] == pytest.approx(10)


def test_2025_masks_outside_before_metrics_and_ms_ssim_orders_quality():
    rng = np.random.default_rng(0)
    gt = rng.normal(0, 400, (40, 40, 40))
    mask = np.zeros(gt.shape)
    mask[5:35, 5:35, 5:35] = 1
    noisy = gt + np.where(mask > 0, rng.normal(0, 50, gt.shape), 3000)  # outside-mask errors ignored
    worse = gt + rng.normal(0, 300, gt.shape)
    a = compute_metrics(gt, noisy, mask, protocol="synthrad2025")
    b = compute_metrics(gt, worse, mask, protocol="synthrad2025")
    assert 0 < b["ms_ssim"] < a["ms_ssim"] < 1
    clipped = np.clip(noisy, -1024, 3071) - np.clip(gt, -1024, 3071)
    assert a["mae"] == pytest.approx(np.abs(clipped)[mask > 0].mean(), rel=1e-6)


def test_bad_input_messages():
    with pytest.raises(ValueError, match="shape mismatch"):
        compute_metrics(np.zeros((3, 3, 3)), np.zeros((3, 3, 4)), np.ones((3, 3, 3)))
    with pytest.raises(ValueError, match="mask is empty"):
        compute_metrics(np.zeros((3, 3, 3)), np.zeros((3, 3, 3)), np.zeros((3, 3, 3)))
