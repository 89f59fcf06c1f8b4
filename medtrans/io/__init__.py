"""Volume input/output: NIfTI, MHA/MHD, NRRD and DICOM series, one in-memory form.

Every reader returns a :class:`Volume` around a SimpleITK image in LPS physical space; geometry is
never separated from the voxels. Readers are chosen by a registry (:data:`READERS` in :mod:`.readers`), one module
per format: :mod:`.nifti` (bytes checked once, NaN/Inf and truncation refused), :mod:`.itk_files` (MHA, NRRD),
:mod:`.dicom_scan` and :mod:`.dicom_read` (series found by header, sorted and checked with pydicom, pixels read by
SimpleITK/GDCM, which applies RescaleSlope/Intercept, so CT comes out in HU), :mod:`.slice_stacks` (tilted,
irregular and enhanced multi-frame stacks onto a rectilinear grid).

Example:
    >>> import tempfile, pathlib
    >>> import SimpleITK as sitk
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> img = sitk.Image([5, 4, 3], sitk.sitkInt16)
    >>> img.SetSpacing((0.5, 0.75, 2.0))
    >>> write_volume(img, d / "x.nii.gz")
    >>> read_volume(d / "x.nii.gz").image.GetSpacing()
    (0.5, 0.75, 2.0)
"""

from __future__ import annotations

from medtrans.io.dicom_read import check_pixel_data, read_dicom_header, sort_series
from medtrans.io.dicom_scan import (
    LINK_ATTRIBUTES,
    VOLUME_SUFFIXES,
    DicomSeriesInfo,
    choose_series,
    scan_dicom,
    series_pattern,
)
from medtrans.io.nifti import GZIP_LEVEL, nifti_bytes, nifti_voxels
from medtrans.io.readers import READERS, WRITE_SUFFIXES, Reader, read_volume, write_volume
from medtrans.io.slice_stacks import FrameStack, SliceLayout, slice_layout, stack_to_image
from medtrans.io.volume import Volume, is_volume_file, require_signal, volume_info

__all__ = [
    "GZIP_LEVEL", "LINK_ATTRIBUTES", "READERS", "VOLUME_SUFFIXES", "WRITE_SUFFIXES", "DicomSeriesInfo", "FrameStack",
    "Reader", "SliceLayout", "Volume", "check_pixel_data", "choose_series", "is_volume_file", "nifti_bytes",
    "nifti_voxels", "read_dicom_header", "read_volume", "require_signal", "scan_dicom", "series_pattern",
    "slice_layout", "sort_series", "stack_to_image", "volume_info", "write_volume",
]
