"""The reader registry that turns any supported path into a :class:`~medtrans.io.volume.Volume`, and the verified
writer. :data:`READERS` is tried in order: the first whose ``accepts`` says yes reads the path (a new format is one
entry here and a module of its own)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from medtrans.errors import InputError, OutputError
from medtrans.fsutil import atomic_path
from medtrans.geometry import same_grid
from medtrans.io.dicom_read import read_dicom_folder, read_single_dicom
from medtrans.io.itk_files import sitk_read, sitk_write
from medtrans.io.nifti import nonfinite_count, read_nifti, write_nifti_gz
from medtrans.io.volume import Volume

WRITE_SUFFIXES = (".nii.gz", ".nii", ".mha", ".nrrd")


@dataclass(frozen=True)
class Reader:
    """One entry of the reader registry."""

    name: str
    accepts: Callable[[Path], bool]
    read: Callable[..., Volume]  #: read(path, series_uid=..., modality=...) -> Volume


def _lower(path: Path) -> str:
    return path.name.lower()


def _nifti(path: Path, **_: Any) -> Volume:
    image, bad = read_nifti(path)
    return Volume(image=image, source=path, stored_nonfinite=bad)


def _itk_file(path: Path, **_: Any) -> Volume:
    return Volume(image=sitk_read(path, "image"), source=path)


def _dicom_folder(path: Path, *, series_uid: str | None = None, modality: str | None = None) -> Volume:
    return read_dicom_folder(path, series_uid=series_uid, modality=modality)


def _dicom_file(path: Path, **_: Any) -> Volume:
    return read_single_dicom(path)


#: The readers, tried in order (a new format is one entry here).
READERS: list[Reader] = [
    Reader("dicom-series-folder", Path.is_dir, _dicom_folder),
    Reader("nifti", lambda p: _lower(p).endswith((".nii.gz", ".nii")), _nifti),
    Reader("itk", lambda p: _lower(p).endswith((".mha", ".mhd", ".nrrd", ".nhdr")), _itk_file),
    Reader("dicom-file", lambda p: True, _dicom_file),
]


def read_volume(
    path: str | Path, *, series_uid: str | None = None, modality: str | None = None, allow_nan: bool = False
) -> Volume:
    """Read a volume from a file or a DICOM series folder.

    Args:
        path: a NIfTI/MHA/MHD/NRRD file, a single DICOM file, or a folder holding a DICOM series.
        series_uid: in a folder with several series, the SeriesInstanceUID to read.
        modality: in a folder with several series, the modality to read (e.g. ``'CT'``) when only one
            series has it.
        allow_nan: accept NaN and infinite voxels (refused by default: they poison every later step).

    Raises:
        InputError: missing path, empty folder, a file that is not a readable image, NaN or infinite voxels.
        DicomSeriesError: ambiguous series choice, missing slices, unplaceable frames, mixed orientations.
    """
    path = Path(path)
    if not path.exists():
        raise InputError("does not exist", path=path)
    reader = next(r for r in READERS if r.accepts(path))
    vol = reader.read(path, series_uid=series_uid, modality=modality)
    _require_3d_scalar(vol.image, vol.source)
    if not allow_nan:
        _require_finite(vol)
    return vol


def _require_3d_scalar(image: sitk.Image, source: Path) -> None:
    size = "x".join(str(n) for n in image.GetSize())
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"expects a 3D scalar volume: got a {image.GetNumberOfComponentsPerPixel()}-component "
                         f"(vector/RGB) image of size {size}", path=source)
    if image.GetDimension() != 3:
        raise InputError(f"expects a 3D scalar volume: got a {image.GetDimension()}D image of size {size}",
                         path=source)


def _require_finite(vol: Volume) -> None:
    bad = vol.stored_nonfinite
    if bad is None:
        bad = nonfinite_count(sitk.GetArrayViewFromImage(vol.image))
    if bad:
        raise InputError(f"contains {bad} NaN or infinite voxel(s); fix or mask them before use", path=vol.source)


def write_volume(image: sitk.Image, path: str | Path, *, compress: bool = True) -> None:
    """Write an image atomically; the format follows the extension (.nii.gz, .nii, .mha, .nrrd).

    The written file is checked before it takes its final name: SimpleITK does not raise on a short write
    (disk full), it only prints a warning. A ``.nii.gz`` is written by SimpleITK uncompressed (it owns the
    header and geometry), compressed with ISA-L's gzip (several times faster than zlib), and verified by
    decompressing it (gzip CRC) and comparing every voxel byte with the image; other formats are read back
    and compared (voxels and grid). DICOM output lives in :mod:`medtrans.dicom_out`.

    Raises:
        OutputError: the file could not be written completely.
    """
    path = Path(path)
    if not path.name.lower().endswith(WRITE_SUFFIXES):
        raise InputError(f"unsupported output format; use one of {', '.join(WRITE_SUFFIXES)}", path=path)
    if compress and path.name.lower().endswith(".nii.gz"):
        write_nifti_gz(image, path)
        return

    def verify(tmp: Path) -> None:
        try:
            back = read_volume(tmp, allow_nan=True).image
        except InputError as exc:
            raise OutputError(f"was not written completely (disk full?): {exc}", path=path) from None
        # SimpleITK reads a NaN in NIfTI back as 0: compare with NaNs as 0 (the byte check saw the NaNs)
        same = same_grid(back, image, tolerance=1e-4) and np.array_equal(
            np.nan_to_num(sitk.GetArrayViewFromImage(back), nan=0.0),
            np.nan_to_num(sitk.GetArrayViewFromImage(image), nan=0.0))
        if not same:
            raise OutputError("reads back different from what was written (disk full?)", path=path)

    with atomic_path(path, verify=verify) as tmp:
        sitk_write(image, tmp, path, compress=compress)
