"""Anatomy: does the sCT put bone where the CT has it? Dice and HD95 of HU-thresholded bone, CT vs sCT.

Image metrics average over the body, where soft tissue dominates; a dose calculation (and a study's reader) cares
most where bone is. Bone is the voxels of the body mask at or above the bone band of :data:`TISSUES` (300 HU, the
threshold of the tissue MAE). Dice with MONAI's ``compute_dice``; the 95th-percentile symmetric Hausdorff
distance in mm with MONAI's ``compute_hausdorff_distance`` (surface distances, the CT's spacing).

Cost is bounded by the bone, not the scan: both are computed on the bounding box of the two bone masks (every
surface voxel and its nearest counterpart lie in it, so the distances are exact).

Example:
    >>> import numpy as np
    >>> ct = np.full((20, 20, 20), 0.0); ct[5:15, 5:15, 5:15] = 1000
    >>> r = bone_overlap(ct, ct, np.ones(ct.shape, bool), spacing=(1.0, 1.0, 1.0))
    >>> r["bone_dice"], r["bone_hd95_mm"]
    (1.0, 0.0)
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance

from medtrans.metrics import TISSUES

#: Bone: the reference CT's bone band (HU at or above), applied to CT and sCT alike.
BONE_HU = TISSUES["bone"][0]


#: SynthRAD2025's organ and bone classes per region (TotalSegmentator v2 "total" label numbers), restated from its
#: evaluation code (SynthRAD2025/evaluation, segmentation_metrics.py): abdomen (AB) and thorax (TH) share one list.
_TRUNK = (2, 3, 5, 6, *range(10, 15), *range(26, 51), 51, 79, *range(92, 116), 116)
SEGMENT_CLASSES: dict[str, tuple[int, ...]] = {
    "AB": _TRUNK,
    "TH": _TRUNK,
    "HN": (15, 16, 17, *range(26, 51), 79, 90, 91),
}


def _box(either: np.ndarray) -> tuple[slice, ...]:
    return tuple(slice(int(i.min()), int(i.max()) + 1) for i in (np.flatnonzero(either.any(axis=tuple(
        a for a in range(3) if a != axis))) for axis in range(3)))


def _dice_hd95(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> tuple[float, float]:
    """MONAI's Dice and 95th-percentile Hausdorff distance (mm) of two boolean masks (z, y, x) cut to the bounding
    box of both (every surface voxel and its nearest counterpart lie in it, so the distances are exact)."""
    a, b = (torch.from_numpy(np.ascontiguousarray(m))[None, None] for m in (pred, ref))
    dice = float(compute_dice(a, b, include_background=True, ignore_empty=False)[0, 0])
    if not a.any() or not b.any():
        return dice, float("nan")
    with warnings.catch_warnings():  # MONAI 1.5+ warns about an argument it passes itself
        warnings.simplefilter("ignore", FutureWarning)
        hd95 = compute_hausdorff_distance(a, b, include_background=True, percentile=95,
                                          spacing=[float(s) for s in reversed(spacing)])
    return dice, float(hd95[0, 0])


def bone_overlap(ct: np.ndarray, sct: np.ndarray, mask: np.ndarray, *, spacing: Sequence[float]) -> dict[str, float]:
    """Dice and HD95 (mm) of bone (≥ :data:`BONE_HU` inside ``mask``) in the sCT against the CT.

    Args:
        ct, sct: volumes in HU, array order (z, y, x).
        mask: body mask, same shape (bool).
        spacing: the image's spacing in SimpleITK order (x, y, z), in mm.

    Returns:
        ``bone_dice`` (NaN when neither has bone, 0 when only one has) and ``bone_hd95_mm`` (NaN when either has
        none: a distance to nothing is undefined).
    """
    either = np.zeros(mask.shape, bool)
    for z0 in range(0, mask.shape[0], 32):  # slab by slab: no full-volume float copies
        sl = slice(z0, z0 + 32)
        either[sl] = ((np.asarray(ct[sl]) >= BONE_HU) | (np.asarray(sct[sl]) >= BONE_HU)) & mask[sl]
    if not either.any():
        return {"bone_dice": float("nan"), "bone_hd95_mm": float("nan")}
    box = _box(either)
    del either
    dice, hd95 = _dice_hd95(*((np.asarray(v[box]) >= BONE_HU) & mask[box] for v in (sct, ct)), spacing)
    return {"bone_dice": dice, "bone_hd95_mm": hd95}


def segment_overlap(ref_labels: np.ndarray, pred_labels: np.ndarray, *, classes: Sequence[int],
                    spacing: Sequence[float]) -> tuple[dict[str, float], dict[int, tuple[float, float]]]:
    """Organ and bone overlap as SynthRAD2025 scores it: per class of ``classes`` present in the reference's labels
    (the CT's segmentation), Dice and HD95 (mm) of the sCT's segmentation; then their means over those classes.

    Returns:
        ``seg_dice``, ``seg_hd95_mm`` (means; NaN where no class is present, where the official code writes 0) and
        ``seg_classes`` (how many were scored); and per class ``(dice, hd95)``.
    """
    per_class: dict[int, tuple[float, float]] = {}
    for c in classes:
        ref = ref_labels == c
        if not ref.any():
            continue
        pred = pred_labels == c
        box = _box(ref | pred)
        per_class[int(c)] = _dice_hd95(pred[box], ref[box], spacing)
    if not per_class:
        return {"seg_dice": float("nan"), "seg_hd95_mm": float("nan"), "seg_classes": 0}, per_class
    dice = np.array([v[0] for v in per_class.values()])
    hd = np.array([v[1] for v in per_class.values()])
    return {"seg_dice": float(dice.mean()), "seg_hd95_mm": float(np.nanmean(hd)) if np.isfinite(hd).any() else
            float("nan"), "seg_classes": len(per_class)}, per_class
