"""Paired axial slice extraction in the canonical orientation.

Volumes are reoriented (losslessly) to :data:`medtrans.geometry.CANONICAL_ORIENTATION`, then every
axial plane is cropped or padded to a fixed in-plane size around the body mask's in-plane centre. 2.5D
stacks are built at training time from neighbouring slices, so one prepared dataset serves any context.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from medtrans.geometry import to_canonical
from medtrans.intensity import CT_BACKGROUND


@dataclass
class SliceStack:
    mr: np.ndarray  # (Z, H, W) float16, normalized
    ct: np.ndarray  # (Z, H, W) float16, normalized
    mask: np.ndarray  # (Z, H, W) uint8
    body_fraction: np.ndarray  # (Z,) float32
    window: tuple[int, int]  # (row, col) of the crop's top-left corner in the canonical slice (may be < 0)


def fixed_window(mask: np.ndarray, size: tuple[int, int]) -> tuple[int, int]:
    """Top-left corner of a ``size`` window centred on the mask's in-plane bounding box."""
    rows = np.where(mask.any(axis=(0, 2)))[0]
    cols = np.where(mask.any(axis=(0, 1)))[0]
    if rows.size == 0:
        centre = (mask.shape[1] // 2, mask.shape[2] // 2)
    else:
        centre = ((rows[0] + rows[-1] + 1) // 2, (cols[0] + cols[-1] + 1) // 2)
    return centre[0] - size[0] // 2, centre[1] - size[1] // 2


def crop_or_pad(volume: np.ndarray, window: tuple[int, int], size: tuple[int, int], fill: float) -> np.ndarray:
    """Cut ``size`` in-plane pixels starting at ``window`` from a (Z, H, W) array, padding with ``fill``."""
    z, h, w = volume.shape
    out = np.full((z, *size), fill, dtype=volume.dtype)
    r0, c0 = window
    src_r = slice(max(r0, 0), min(r0 + size[0], h))
    src_c = slice(max(c0, 0), min(c0 + size[1], w))
    dst_r = slice(src_r.start - r0, src_r.stop - r0)
    dst_c = slice(src_c.start - c0, src_c.stop - c0)
    out[:, dst_r, dst_c] = volume[:, src_r, src_c]
    return out


def extract_slices(mr_norm: sitk.Image, ct_norm: sitk.Image, mask: sitk.Image, *, size: tuple[int, int],
                   mr_background: float) -> SliceStack:
    """Cut paired axial slices (canonical orientation) from normalized MR/CT and a mask on one grid."""
    mr = sitk.GetArrayFromImage(to_canonical(mr_norm))
    ct = sitk.GetArrayFromImage(to_canonical(ct_norm))
    m = sitk.GetArrayFromImage(to_canonical(mask)).astype(np.uint8)
    window = fixed_window(m, size)
    mr_c = crop_or_pad(mr, window, size, mr_background)
    ct_c = crop_or_pad(ct, window, size, CT_BACKGROUND)
    m_c = crop_or_pad(m, window, size, 0)
    frac = m_c.reshape(m_c.shape[0], -1).mean(axis=1).astype(np.float32)
    return SliceStack(mr_c.astype(np.float16), ct_c.astype(np.float16), m_c, frac, (int(window[0]), int(window[1])))
