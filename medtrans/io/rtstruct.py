"""A region of an RTSTRUCT (DICOM structure set) as a mask on an image's grid: a dose target drawn in a planning
system.

Each closed planar contour is mapped from patient coordinates (LPS mm, the same space as every image here) to the
image's continuous voxel index and filled on its slice; contours on one slice combine by even-odd (a contour inside
another is a hole), as the DICOM standard intends. Contours must lie on the image's slices (the CT they were drawn
on, or a volume converted from it with its geometry kept).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from medtrans.errors import InputError

#: How far (in slices) a contour's points may lie off one slice of the image before it is refused.
SLICE_TOLERANCE = 0.25


def _read_structure_set(path: Path) -> Any:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, OSError, EOFError) as exc:
        raise InputError(f"is not a readable DICOM file: {exc}", path=path) from None
    if getattr(ds, "Modality", None) != "RTSTRUCT" or "StructureSetROISequence" not in ds:
        raise InputError(f"is not an RTSTRUCT (Modality {getattr(ds, 'Modality', 'absent')})", path=path)
    return ds


def roi_names(path: str | Path) -> list[str]:
    """The region names of an RTSTRUCT file, in its order."""
    return [str(r.ROIName) for r in _read_structure_set(Path(path)).StructureSetROISequence]


def _contours_of(ds: Any, name: str, path: Path) -> list[np.ndarray]:
    rois = {str(r.ROIName).strip().lower(): int(r.ROINumber) for r in ds.StructureSetROISequence}
    number = rois.get(name.strip().lower())
    if number is None:
        names = ", ".join(repr(str(r.ROIName)) for r in ds.StructureSetROISequence)
        raise InputError(f"has no region named {name!r} (its regions: {names})", path=path)
    contours = []
    for roi in getattr(ds, "ROIContourSequence", []):
        if int(roi.ReferencedROINumber) != number:
            continue
        for c in getattr(roi, "ContourSequence", []):
            if str(getattr(c, "ContourGeometricType", "CLOSED_PLANAR")) != "CLOSED_PLANAR":
                continue  # points and open polylines enclose nothing
            contours.append(np.asarray(c.ContourData, np.float64).reshape(-1, 3))
    if not contours:
        raise InputError(f"region {name!r} has no closed planar contour", path=path)
    return contours


def rtstruct_mask(path: str | Path, name: str, reference: sitk.Image) -> sitk.Image:
    """The region ``name`` (case-insensitive) of the RTSTRUCT at ``path`` as a 0/1 mask on ``reference``'s grid.

    Raises:
        InputError: not an RTSTRUCT, no such region (the message lists the names), or contours that do not lie on
            the reference's slices or fall outside it.
    """
    from skimage.draw import polygon

    path = Path(path)
    contours = _contours_of(_read_structure_set(path), name, path)
    nx, ny, nz = reference.GetSize()
    mask = np.zeros((nz, ny, nx), bool)
    for points in contours:
        index = np.array([reference.TransformPhysicalPointToContinuousIndex(tuple(p)) for p in points])
        k = float(np.mean(index[:, 2]))
        if np.ptp(index[:, 2]) > 2 * SLICE_TOLERANCE or abs(k - round(k)) > SLICE_TOLERANCE:
            raise InputError(f"region {name!r} has a contour that does not lie on a slice of the CT (slice index "
                             f"{index[:, 2].min():.2f}-{index[:, 2].max():.2f}); give the mask as target.nii.gz",
                             path=path)
        if not 0 <= round(k) < nz:
            continue  # a contour beyond the scanned slices
        rows, cols = polygon(index[:, 1], index[:, 0], shape=(ny, nx))
        layer = np.zeros((ny, nx), bool)
        layer[rows, cols] = True
        mask[round(k)] ^= layer
    if not mask.any():
        raise InputError(f"region {name!r} covers no voxel of the CT", path=path)
    out = sitk.GetImageFromArray(mask.astype(np.uint8))
    out.CopyInformation(reference)
    return out
