"""The in-memory volume: a SimpleITK image in LPS physical space and where it came from (geometry is never
separated from the voxels), and what can be said of one without its file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import SimpleITK as sitk

from medtrans.errors import InputError
from medtrans.geometry import geometry_of, orientation_code
from medtrans.io.dicom_scan import VOLUME_SUFFIXES


@dataclass
class Volume:
    """An image with where it came from.

    Attributes:
        image: the voxels and their grid (LPS physical space).
        source: the file or folder it was read from.
        modality: ``'CT'``, ``'MR'`` or ``None`` when the format does not say.
        dicom_link: for DICOM input, the patient/study/frame-of-reference attributes a derived series
            must repeat to join the same study. Never written to logs or reports.
        reconstruction: what the reader did beyond reading voxels (a tilted or irregularly spaced series
            resampled onto a rectilinear grid, an enhanced multi-frame file), or None.
        stored_nonfinite: NaN/Inf voxels the file stores, where the reader counted them before the image library
            could hide them (SimpleITK reads a NIfTI NaN or Inf as 0); None: count them in ``image``.
    """

    image: sitk.Image
    source: Path
    modality: str | None = None
    dicom_link: dict[str, Any] | None = None
    reconstruction: dict[str, Any] | None = None
    stored_nonfinite: int | None = None


def is_volume_file(path: Path) -> bool:
    """True for a file whose name ends in one of :data:`VOLUME_SUFFIXES`."""
    return path.is_file() and path.name.lower().endswith(VOLUME_SUFFIXES)


def require_signal(vol: Volume, role: str) -> None:
    """Refuse a blank or constant image, naming its role (``'MR'``, ``'CT'``) and file.

    Example:
        >>> blank = Volume(image=sitk.Image([4, 4, 4], sitk.sitkInt16), source=Path("mr.nii.gz"))
        >>> require_signal(blank, "MR")
        Traceback (most recent call last):
        ...
        medtrans.errors.InputError: mr.nii.gz: the MR image is blank: every voxel is 0
    """
    arr = sitk.GetArrayViewFromImage(vol.image)
    lo, hi = float(arr.min()), float(arr.max())
    if lo == hi:
        raise InputError(f"the {role} image is blank: every voxel is {lo:g}", path=vol.source)


def volume_info(vol: Volume) -> dict[str, Any]:
    """The JSON that ``medtrans info`` prints: geometry, modality, dtype and value range."""
    arr = sitk.GetArrayViewFromImage(vol.image)
    info: dict[str, Any] = geometry_of(vol.image)
    info["modality"] = vol.modality
    info["dtype"] = str(arr.dtype)
    info["min"] = float(arr.min())
    info["max"] = float(arr.max())
    info["orientation"] = orientation_code(vol.image)
    if vol.reconstruction:
        info["reconstruction"] = vol.reconstruction
    return info
