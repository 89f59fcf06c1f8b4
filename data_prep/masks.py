"""Body masks on the MR grid."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from medtrans.intensity import mr_foreground


def body_mask(mr: sitk.Image, ct_on_mr: sitk.Image | None = None, *, body_hu: float = -400.0) -> sitk.Image:
    """Body mask from the MR (Otsu foreground) and, when given, the registered CT (above ``body_hu``).

    Steps: union of the two foregrounds, a small opening (cuts couch and head-rest links), the largest
    connected component, a closing, and holes filled slice by slice (sinuses and airways stay inside).
    """
    fg = mr_foreground(sitk.GetArrayFromImage(mr).astype(np.float32))
    if ct_on_mr is not None:
        fg |= sitk.GetArrayFromImage(ct_on_mr) > body_hu
    structure = ndimage.generate_binary_structure(3, 1)
    fg = ndimage.binary_opening(fg, structure, iterations=1)
    labels, n = ndimage.label(fg)
    if n > 1:
        sizes = ndimage.sum(fg, labels, index=np.arange(1, n + 1))
        fg = labels == (int(np.argmax(sizes)) + 1)
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
