"""Body masks: on registration's working grids (CT without couch, head-rest, immobilization mask or container; MR
body with its dark skull filled) and on the MR grid of a prepared case.

Example:
    >>> import numpy as np, SimpleITK as sitk
    >>> arr = np.full((20, 40, 40), -1000, np.int16)
    >>> arr[4:16, 8:30, 8:30] = 40      # the body
    >>> arr[:, 34:36, :] = 300          # a 2-voxel couch plate, touching nothing
    >>> ct = sitk.GetImageFromArray(arr)
    >>> body = ct_body(ct, opening_mm=2.0)
    >>> int(sitk.GetArrayViewFromImage(body)[:, 34:36].sum()), int(sitk.GetArrayViewFromImage(body)[10, 20, 20])
    (0, 1)
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from medtrans.intensity import mr_foreground

#: CT voxels above this (HU) are body (or couch, before the couch is removed).
BODY_HU = -400.0
#: Opening radius that cuts a couch, a head-rest, a thermoplastic mask or a container wall from the body (mm).
CT_OPENING_MM = 4.0
#: Closing radius that bridges the MR's dark skull and cortical bone between bright scalp and brain (mm).
MR_CLOSING_MM = 8.0


def _radius(image: sitk.Image, mm: float) -> list[int]:
    return [max(1, round(mm / s)) for s in image.GetSpacing()]


def largest_component(mask: sitk.Image) -> sitk.Image:
    """The largest 6-connected component of a binary image (empty stays empty)."""
    labels = sitk.RelabelComponent(sitk.ConnectedComponent(sitk.Cast(mask > 0, sitk.sitkUInt8)), sortByObjectSize=True)
    return sitk.Cast(labels == 1, sitk.sitkUInt8)


def fill_holes_by_slice(mask: sitk.Image) -> sitk.Image:
    """Holes filled in every slice of the grid (sinuses and airways open to the outside in 3D stay inside)."""
    arr = sitk.GetArrayViewFromImage(mask) > 0
    out = sitk.GetImageFromArray(np.stack([ndimage.binary_fill_holes(s) for s in arr]).astype(np.uint8))
    out.CopyInformation(mask)
    return out


def ct_body(ct: sitk.Image, *, opening_mm: float = CT_OPENING_MM) -> sitk.Image:
    """The patient's body in a CT (uint8): above :data:`BODY_HU`, opened by ``opening_mm``, largest component.

    The opening cuts thin structures touching the body (couch plates, head-rests, thermoplastic masks, container
    walls); meant for a registration working grid, where its cost is bounded by the grid, not the scan.
    """
    fg = sitk.Cast(ct > BODY_HU, sitk.sitkUInt8)
    opened = sitk.BinaryMorphologicalOpening(fg, _radius(ct, opening_mm), sitk.sitkBall)
    return fill_holes_by_slice(largest_component(opened))


def mr_body(mr: sitk.Image, *, closing_mm: float = MR_CLOSING_MM) -> sitk.Image:
    """The body in an MR (uint8): Otsu foreground, closed by ``closing_mm`` (dark bone bridged), largest component,
    holes filled slice by slice. For registration working grids."""
    fg = sitk.GetImageFromArray(mr_foreground(np.maximum(sitk.GetArrayViewFromImage(mr), 0)).astype(np.uint8))
    fg.CopyInformation(mr)
    radius = _radius(mr, closing_mm)
    padded = sitk.ConstantPad(fg, radius, radius, 0)  # a closing must not glue the body to the image border
    closed = sitk.Crop(sitk.BinaryMorphologicalClosing(padded, radius, sitk.sitkBall), radius, radius)
    return fill_holes_by_slice(largest_component(closed))


def body_mask(mr: sitk.Image, ct_on_mr: sitk.Image | None = None, *, body_hu: float = BODY_HU,
              within: sitk.Image | None = None) -> sitk.Image:
    """Body mask on the MR grid from the MR (Otsu foreground) and, when given, the registered CT (above ``body_hu``).

    Steps: union of the two foregrounds (limited to ``within``, e.g. the couch-free bodies of registration mapped
    onto this grid), a small opening, the largest connected component, a closing, and holes filled slice by slice
    (sinuses and airways stay inside).
    """
    fg = mr_foreground(np.maximum(sitk.GetArrayViewFromImage(mr), 0).astype(np.float32, copy=False))
    if ct_on_mr is not None:
        fg |= sitk.GetArrayViewFromImage(ct_on_mr) > body_hu
    if within is not None:
        fg &= sitk.GetArrayViewFromImage(within) > 0
    structure = ndimage.generate_binary_structure(3, 1)
    fg = ndimage.binary_opening(fg, structure, iterations=1)
    labels, n = ndimage.label(fg)
    if n > 1:
        sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
        fg = labels == (int(np.argmax(sizes)) + 1)
    del labels
    fg = ndimage.binary_closing(fg, structure, iterations=2)
    fg = np.stack([ndimage.binary_fill_holes(s) for s in fg])
    out = sitk.GetImageFromArray(fg.astype(np.uint8))
    out.CopyInformation(mr)
    return out


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two boolean arrays (1.0 when both are empty)."""
    a, b = a.astype(bool), b.astype(bool)
    denom = a.sum() + b.sum()
    return 1.0 if denom == 0 else float(2.0 * np.logical_and(a, b).sum() / denom)
