"""Bone overlap (Dice, HD95 in mm) of the sCT against the CT."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medtrans.evaluation.anatomy import BONE_HU, bone_overlap


def block(shape=(30, 40, 50)) -> np.ndarray:
    ct = np.zeros(shape)
    ct[8:20, 10:30, 10:30] = 1000.0
    return ct


def test_identical_bone_is_perfect():
    ct = block()
    assert bone_overlap(ct, ct.copy(), np.ones(ct.shape, bool), spacing=(1, 1, 1)) == {"bone_dice": 1.0,
                                                                                       "bone_hd95_mm": 0.0}


@pytest.mark.parametrize(("axis", "spacing", "mm"), [(2, (0.5, 1.0, 2.5), 1.0), (0, (0.5, 1.0, 2.5), 5.0),
                                                     (1, (0.5, 1.0, 2.5), 2.0)])
def test_a_shift_reads_its_distance_in_mm_along_the_right_axis(axis, spacing, mm):
    """Array axis 0 is z: a 2-voxel shift along it is 2 x 2.5 mm (SimpleITK's spacing order is x, y, z)."""
    ct = block()
    sct = np.roll(ct, 2, axis=axis)
    r = bone_overlap(ct, sct, np.ones(ct.shape, bool), spacing=spacing)
    assert r["bone_hd95_mm"] == pytest.approx(mm)
    width = (ct >= BONE_HU).sum(axis=tuple(a for a in range(3) if a != axis)).astype(bool).sum()
    assert r["bone_dice"] == pytest.approx(1 - 2 / width, abs=1e-6)


def test_bone_outside_the_body_mask_is_ignored_and_missing_bone_is_said():
    ct = block()
    mask = np.ones(ct.shape, bool)
    sct = ct.copy()
    sct[0:3] = 1500.0  # a couch-like slab of "bone" outside the body
    mask[0:3] = False
    assert bone_overlap(ct, sct, mask, spacing=(1, 1, 1))["bone_dice"] == 1.0
    none = bone_overlap(ct, np.zeros_like(ct), mask, spacing=(1, 1, 1))
    assert none["bone_dice"] == 0.0 and math.isnan(none["bone_hd95_mm"])
    neither = bone_overlap(np.zeros_like(ct), np.zeros_like(ct), mask, spacing=(1, 1, 1))
    assert math.isnan(neither["bone_dice"]) and math.isnan(neither["bone_hd95_mm"])
