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
    # MAE is not clipped (the official code masks, then takes |CT - sCT| as it is); PSNR is
    assert a["mae"] == pytest.approx(np.abs(noisy - gt)[mask > 0].mean(), rel=1e-9)


@pytest.mark.parametrize("shape", [(40, 50, 45), (96, 31, 120), (130, 101, 99), (17, 200, 64)])
def test_2025_equals_the_official_definitions_on_volumes_of_varied_sizes(shape):
    """Against the official code's definitions restated plainly (reference.py: full volumes, FFT downsampling,
    padding split before/after, luminance weighted at every scale, decimated mask, clip [-1024, 3071]); sizes
    under 97 are padded on one axis or several, odd sizes lose a different last voxel when halved."""
    rng = np.random.default_rng(sum(shape))
    gt = rng.normal(0, 600, shape).astype(np.float32)
    gt[:, :4] = -1000
    pred = (gt + rng.normal(30, 150, shape)).astype(np.float32)
    pred[0, 0, 0], pred[1, 1, 1] = 5000, -3000  # outside the range: clipped for PSNR and MS-SSIM, not for MAE
    mask = np.zeros(shape, np.uint8)
    mask[1:-2, 6:-3, 2:-1] = 1
    got = compute_metrics(gt, pred, mask, protocol="synthrad2025")
    assert got["mae"] == pytest.approx(ref.mae_2025(gt, pred, mask), abs=1e-9)
    assert got["psnr"] == pytest.approx(ref.psnr_2025(gt, pred, mask), abs=1e-9)
    assert got["ms_ssim"] == pytest.approx(ref.ms_ssim_2025(gt, pred, mask), abs=1e-9)


def test_2025_quirks_are_the_official_ones():
    """A volume under 97 voxels along one axis is padded on both sides, as the official code does: padding after
    only (the previous implementation) reads a different value."""
    from medtrans.metrics import ms_ssim

    rng = np.random.default_rng(5)
    gt = rng.normal(1500, 400, (64, 100, 100)).clip(0, 4095)
    pred = np.roll(gt, 1, axis=1)
    mask = np.ones(gt.shape, bool)
    official = ms_ssim(gt, pred, mask, 4095.0)
    assert official == pytest.approx(ref.ms_ssim_2025(gt - 1024, pred - 1024, mask), abs=1e-9)
    after_only = ref.ms_ssim_2025(np.pad(gt, ((0, 33), (0, 0), (0, 0)), mode="edge") - 1024,
                                  np.pad(pred, ((0, 33), (0, 0), (0, 0)), mode="edge") - 1024,
                                  np.pad(mask, ((0, 33), (0, 0), (0, 0)), mode="edge"))
    assert abs(after_only - official) > 1e-4, (after_only, official)


def test_bad_input_messages():
    with pytest.raises(ValueError, match="shape mismatch"):
        compute_metrics(np.zeros((3, 3, 3)), np.zeros((3, 3, 4)), np.ones((3, 3, 3)))
    with pytest.raises(ValueError, match="mask is empty"):
        compute_metrics(np.zeros((3, 3, 3)), np.zeros((3, 3, 3)), np.zeros((3, 3, 3)))
