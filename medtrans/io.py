"""Volume input/output: NIfTI, MHA/MHD, NRRD and DICOM series, one in-memory form.

Every reader returns a :class:`Volume` around a SimpleITK image in LPS physical space; geometry is
never separated from the voxels. DICOM series are inspected with pydicom first (series choice, slice
order, missing slices, tilt) and then read by SimpleITK/GDCM, which applies RescaleSlope/Intercept, so
CT comes out in HU.

Example:
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> img = sitk.Image([5, 4, 3], sitk.sitkInt16)
    >>> img.SetSpacing((0.5, 0.75, 2.0))
    >>> write_volume(img, d / "x.nii.gz")
    >>> read_volume(d / "x.nii.gz").image.GetSpacing()
    (0.5, 0.75, 2.0)
"""

from __future__ import annotations

import io
import math
import os
import re
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from medtrans.dicom_out import LINK_ATTRIBUTES
from medtrans.errors import DicomSeriesError, InputError, OutputError
from medtrans.fsutil import atomic_path
from medtrans.geometry import geometry_of, orientation_code, same_grid

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr")
WRITE_SUFFIXES = (".nii.gz", ".nii", ".mha", ".nrrd")
#: gzip level of written ``.nii.gz`` files: ISA-L's level 2 compresses like zlib's default (6) at ~20x the speed.
GZIP_LEVEL = 2

@dataclass
class DicomSeriesInfo:
    """What the header scan learned about one series (no patient identifiers are kept here)."""

    series_uid: str
    modality: str
    description: str
    files: list[Path] = field(default_factory=list)
    protocol: str = ""
    image_type: tuple[str, ...] = ()

    def summary(self) -> str:
        return f"{self.series_uid} ({self.modality or '?'}, '{self.description}', {len(self.files)} files)"

    @property
    def skip_reason(self) -> str | None:
        """Why the default series rule passes this series over (a localizer or a derived series), or None."""
        kinds = {t.upper() for t in self.image_type}
        if "LOCALIZER" in kinds or _LOCALIZER_NAMES.search(f"{self.description} {self.protocol}"):
            return "localizer"
        if self.image_type and self.image_type[0].upper() == "DERIVED":
            return "derived"
        return None

    def matches(self, pattern: str) -> bool:
        """``pattern`` (a case-insensitive regular expression) found in the description or protocol, or the UID."""
        return pattern == self.series_uid or bool(
            re.search(pattern, f"{self.description}\n{self.protocol}", flags=re.IGNORECASE))


_LOCALIZER_NAMES = re.compile(r"\b(localizer|localiser|loc|scout|survey|topogram|3[- ]?plane|aahead_scout)\b",
                              re.IGNORECASE)


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
            resampled onto a rectilinear grid, an enhanced multi-frame file, missing geometry), or None.
    """

    image: sitk.Image
    source: Path
    modality: str | None = None
    dicom_link: dict[str, Any] | None = None
    reconstruction: dict[str, Any] | None = None


def is_volume_file(path: Path) -> bool:
    """True for a file whose name ends in one of :data:`VOLUME_SUFFIXES`."""
    return path.is_file() and path.name.lower().endswith(VOLUME_SUFFIXES)


def read_volume(
    path: str | Path, *, series_uid: str | None = None, modality: str | None = None, allow_nan: bool = False
) -> Volume:
    """Read a volume from a file or a DICOM series folder.

    Args:
        path: a NIfTI/MHA/MHD/NRRD file, a single DICOM file, or a folder holding a DICOM series.
        series_uid: in a folder with several series, the SeriesInstanceUID to read.
        modality: in a folder with several series, the modality to read (e.g. ``'CT'``) when only one
            series has it.
        allow_nan: accept NaN voxels (rejected by default: they poison every later step).

    Raises:
        InputError: missing path, empty folder, or a file that is not a readable image.
        DicomSeriesError: ambiguous series choice, missing slices, tilt, mixed orientations.
    """
    path = Path(path)
    if not path.exists():
        raise InputError("does not exist", path=path)
    if path.is_dir():
        vol = _read_dicom_folder(path, series_uid=series_uid, modality=modality)
    elif path.name.lower().endswith(VOLUME_SUFFIXES):
        vol = Volume(image=_sitk_read(path, "image"), source=path)
    else:
        vol = _read_single_dicom(path)
    _require_3d_scalar(vol.image, vol.source)
    _check_content(vol, allow_nan=allow_nan)
    return vol


def _require_3d_scalar(image: sitk.Image, source: Path) -> None:
    size = "x".join(str(n) for n in image.GetSize())
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"expects a 3D scalar volume: got a {image.GetNumberOfComponentsPerPixel()}-component "
                         f"(vector/RGB) image of size {size}", path=source)
    if image.GetDimension() != 3:
        raise InputError(f"expects a 3D scalar volume: got a {image.GetDimension()}D image of size {size}",
                         path=source)


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
        _write_nifti_gz(image, path)
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
        _sitk_write(image, tmp, path, compress=compress)


def _sitk_write(image: sitk.Image, tmp: Path, final: Path, *, compress: bool) -> None:
    try:
        sitk.WriteImage(image, str(tmp), useCompression=compress)
    except RuntimeError as exc:  # some ITK writers do raise (MetaImage on a full disk)
        raise OutputError(f"could not be written: {_itk_reason(exc)}", path=final) from None


def _require_voxels(raw: bytes, image: sitk.Image, final: Path) -> None:
    """The NIfTI bytes hold exactly the image's voxels (NaN where it has NaN)."""
    try:
        stored = nifti_voxels(raw, final)
    except InputError as exc:
        raise OutputError(f"was not written completely (disk full?): {exc}", path=final) from None
    want = sitk.GetArrayViewFromImage(image).ravel()
    if stored.shape != want.shape or not np.array_equal(stored, want, equal_nan=stored.dtype.kind == "f"):
        raise OutputError("reads back different from what was written (disk full?)", path=final)


def _write_nifti_gz(image: sitk.Image, path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name.split('.')[0]}.", suffix=".tmp.nii", dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise OutputError(f"could not be written: {exc}", path=path) from None
    plain = Path(name)
    try:
        _sitk_write(image, plain, path, compress=False)
        raw = plain.read_bytes()
    except OSError as exc:
        raise OutputError(f"could not be written: {exc}", path=path) from None
    finally:
        plain.unlink(missing_ok=True)
    _require_voxels(raw, image, path)

    def verify(tmp: Path) -> None:
        try:
            same = nifti_bytes(tmp) == raw
        except InputError as exc:
            raise OutputError(f"was not written completely (disk full?): {exc}", path=path) from None
        if not same:
            raise OutputError("reads back different from what was written (disk full?)", path=path)

    with atomic_path(path, verify=verify) as tmp:
        tmp.write_bytes(_gzip().compress(raw, compresslevel=GZIP_LEVEL))


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


# --------------------------------------------------------------------------------------------- internals


def _sitk_read(path: Path, what: str) -> sitk.Image:
    if path.stat().st_size == 0:
        raise InputError(f"is an empty file, not a {what}", path=path)
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise InputError(f"cannot be read as an {what}: {_itk_reason(exc)}", path=path) from None


def _itk_reason(exc: Exception) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    # ITK's first lines are source locations; the last meaningful one says what went wrong.
    for ln in reversed(lines):
        if not ln.startswith(("sitk::", "/", "itk::ERROR")) or "ERROR" in ln:
            return ln.split("): ")[-1][:300]
    return (lines[-1] if lines else str(exc))[:300]


def _check_content(vol: Volume, *, allow_nan: bool) -> None:
    n = 0
    if vol.source.is_file() and vol.source.name.lower().endswith((".nii", ".nii.gz")):
        # SimpleITK's NIfTI reader silently turns NaN into 0 and zero-fills truncated data, so look at the bytes
        data = nifti_voxels(nifti_bytes(vol.source), vol.source)
        if np.issubdtype(data.dtype, np.floating):
            n = int(np.isnan(data).sum())
    elif vol.image.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64):
        n = int(np.isnan(sitk.GetArrayViewFromImage(vol.image)).sum())
    if n and not allow_nan:
        raise InputError(f"contains {n} NaN voxel(s); fix or mask them before use", path=vol.source)


def _gzip() -> Any:
    """ISA-L's gzip (python-isal: several times faster than zlib, same format) where installed, else the stdlib's."""
    try:
        from isal import igzip
    except ImportError:  # pragma: no cover - isal is a dependency; a platform without a wheel falls back
        import gzip as igzip
    return igzip


def nifti_bytes(path: Path) -> bytes:
    """The uncompressed bytes of a ``.nii``/``.nii.gz`` file (gzip's CRC and length verified).

    Raises:
        InputError: the gzip stream is damaged or cut short.
    """
    data = path.read_bytes()
    if not path.name.lower().endswith(".gz"):
        return data
    try:
        return _gzip().decompress(data)
    except _gzip_errors() as exc:
        raise InputError(f"is a damaged NIfTI file: its gzip data is broken or cut short ({exc})",
                         path=path) from None


def _gzip_errors() -> tuple[type[Exception], ...]:
    import zlib

    errors: tuple[type[Exception], ...] = (OSError, EOFError, ValueError, zlib.error)
    try:
        from isal.isal_zlib import error as isal_error
    except ImportError:  # pragma: no cover
        return errors
    return (*errors, isal_error)


def nifti_voxels(raw: bytes, path: Path) -> np.ndarray:
    """The voxel array a NIfTI file's bytes hold, as stored (a view, no copy), after checking that all are there.

    Raises:
        InputError: not a NIfTI header, or fewer voxel bytes than the header declares (a truncated file).
    """
    import nibabel as nib

    klass = nib.Nifti2Header if len(raw) >= 4 and int.from_bytes(raw[:4], "little") in (540, 469893120) \
        else nib.Nifti1Header
    try:
        header = klass.from_fileobj(io.BytesIO(raw[:2048]), check=False)
        dtype, shape = header.get_data_dtype(), header.get_data_shape()
        offset = int(header.get_data_offset())
    except Exception as exc:
        raise InputError(f"is a damaged NIfTI file: {exc}", path=path) from None
    count = int(np.prod(shape, dtype=np.int64))
    need = offset + count * dtype.itemsize
    if len(raw) < need:
        raise InputError(f"is a damaged NIfTI file: it holds {len(raw) - offset} of the {need - offset} voxel "
                         "bytes its header declares (truncated?)", path=path)
    return np.frombuffer(raw, dtype=dtype, count=count, offset=offset)


def _read_single_dicom(path: Path) -> Volume:
    from pydicom.errors import InvalidDicomError

    try:
        ds = read_dicom_header(path)
    except (InvalidDicomError, OSError, ValueError) as exc:
        raise InputError(
            f"is neither a volume file ({', '.join(VOLUME_SUFFIXES)}) nor DICOM: {exc}", path=path
        ) from None
    check_pixel_data(ds, path)
    modality = getattr(ds, "Modality", None)
    if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1 or "PerFrameFunctionalGroupsSequence" in ds:
        return _read_enhanced(ds, path, modality)
    image = _sitk_read(path, "DICOM image")
    return Volume(image=image, source=path, modality=modality, dicom_link=_link_of(ds))


def _read_enhanced(ds: Any, path: Path, modality: str | None) -> Volume:
    """An enhanced (multi-frame) CT/MR file: geometry and rescale from its functional groups."""
    stack = _enhanced_frames(ds, path)
    if stack is None:  # no plane position/orientation: nothing places the frames in patient space
        image = _sitk_read(path, "DICOM image")
        note = {"enhanced_multiframe": True, "frames": int(getattr(ds, "NumberOfFrames", 1) or 1),
                "warning": "the file has no plane position/orientation functional groups: its geometry is unknown, "
                           "and SimpleITK's defaults (origin 0, identity direction, 1 mm) are used"}
        return Volume(image=image, source=path, modality=modality, dicom_link=_link_of(ds), reconstruction=note)
    image, record = stack_to_image(stack, source=path, what="the enhanced multi-frame image")
    note = {"enhanced_multiframe": True, "frames": len(stack.positions), **(record or {})}
    return Volume(image=image, source=path, modality=modality, dicom_link=_link_of(ds), reconstruction=note)


def _enhanced_frames(ds: Any, path: Path) -> FrameStack | None:
    """The frames of an enhanced image with per-frame geometry (per-frame groups override shared ones)."""
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    per = ds.get("PerFrameFunctionalGroupsSequence") or []
    shared = (ds.get("SharedFunctionalGroupsSequence") or [None])[0]
    if len(per) != frames:
        return None

    def group(i: int, keyword: str) -> Any:
        for source in (per[i], shared):
            if source is not None and keyword in source and len(source[keyword].value):
                return source[keyword][0]
        return None

    positions, orientations, spacings, rescale = [], [], [], []
    for i in range(frames):
        pos, ori, meas = (group(i, k) for k in ("PlanePositionSequence", "PlaneOrientationSequence",
                                                 "PixelMeasuresSequence"))
        if pos is None or ori is None or meas is None or "ImagePositionPatient" not in pos:
            return None
        positions.append([float(v) for v in pos.ImagePositionPatient])
        orientations.append(tuple(np.round(np.asarray(ori.ImageOrientationPatient, float), 4)))
        spacings.append(tuple(float(v) for v in meas.PixelSpacing))
        pvt = group(i, "PixelValueTransformationSequence")
        slope = float(getattr(pvt, "RescaleSlope", None) or getattr(ds, "RescaleSlope", 1.0) or 1.0)
        intercept = float(getattr(pvt, "RescaleIntercept", None) or getattr(ds, "RescaleIntercept", 0.0) or 0.0)
        rescale.append((slope, intercept))
    if len(set(orientations)) > 1 or len(set(spacings)) > 1:
        raise DicomSeriesError("the enhanced multi-frame image mixes frame orientations or pixel spacings; it is "
                               "not one volume", path=path)
    try:
        pixels = np.asarray(ds.pixel_array, dtype=np.float32).reshape(frames, int(ds.Rows), int(ds.Columns))
    except Exception as exc:  # pydicom raises several types for undecodable pixel data
        raise InputError(f"the enhanced multi-frame pixel data cannot be decoded: {exc}", path=path) from None
    slopes, intercepts = (np.array(v, np.float32)[:, None, None] for v in zip(*rescale, strict=True))
    return FrameStack(pixels * slopes + intercepts, np.array(positions), np.array(orientations[0]), spacings[0])


def read_dicom_header(path: Path) -> Any:
    """Read a DICOM file's attributes without its pixels (their length and offset stay known)."""
    import pydicom

    return pydicom.dcmread(path, defer_size=1024)


#: Transfer syntaxes whose PixelData is stored uncompressed, so that its exact length is known.
_NATIVE_SYNTAXES = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2")


def check_pixel_data(ds: Any, path: Path) -> None:
    """Refuse a DICOM image whose PixelData is missing or shorter than its rows x columns x frames.

    SimpleITK/GDCM zero-fill a cut-short slice without a word, which would put a black band into the
    volume; ``ds`` comes from :func:`read_dicom_header`, so nothing here reads the pixels.
    """
    if "PixelData" not in ds:
        if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            return
        raise InputError("is a DICOM file without pixel data", path=path)
    raw = ds.get_item(0x7FE00010, keep_deferred=True)
    declared, offset = getattr(raw, "length", None), getattr(raw, "value_tell", None)
    if declared is None or offset is None or declared == 0xFFFFFFFF:  # already decoded, or encapsulated
        return
    available = path.stat().st_size - offset
    if available < declared:
        raise InputError(f"PixelData is cut short: the file ends {declared - available} bytes before the end "
                         f"of its {declared}-byte pixel data (incomplete copy?)", path=path)
    syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "1.2.840.10008.1.2.1")
    if syntax in _NATIVE_SYNTAXES:
        frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
        need = (int(ds.Rows) * int(ds.Columns) * int(getattr(ds, "SamplesPerPixel", 1) or 1)
                * int(ds.BitsAllocated) * frames + 7) // 8
        if declared < need:
            raise InputError(f"PixelData holds {declared} bytes where {ds.Rows}x{ds.Columns}x{frames} pixels of "
                             f"{ds.BitsAllocated} bits need {need}", path=path)


def _link_of(ds: Any) -> dict[str, Any]:
    return {k: str(getattr(ds, k)) for k in LINK_ATTRIBUTES if k in ds}


def scan_dicom(folder: Path, *, recursive: bool = False) -> dict[str, DicomSeriesInfo]:
    """Group the DICOM files under ``folder`` by SeriesInstanceUID (headers only, non-DICOM skipped)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    series: dict[str, DicomSeriesInfo] = {}
    files = sorted(folder.rglob("*") if recursive else folder.iterdir())
    for f in files:
        if not f.is_file() or f.name.startswith(".") or f.name.lower().endswith(VOLUME_SUFFIXES):
            continue
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=[
                "SeriesInstanceUID", "Modality", "SeriesDescription", "ProtocolName", "ImageType"])
        except (InvalidDicomError, OSError, ValueError, EOFError):
            continue
        uid = str(getattr(ds, "SeriesInstanceUID", "") or "")
        if not uid:  # de-identification sometimes blanks the UID: group by what is left
            uid = f"no-uid:{getattr(ds, 'Modality', '') or '?'}:{getattr(ds, 'SeriesDescription', '') or '?'}"
        image_type = getattr(ds, "ImageType", None) or ()
        info = series.setdefault(
            uid, DicomSeriesInfo(uid, str(getattr(ds, "Modality", "") or ""),
                                 str(getattr(ds, "SeriesDescription", "") or ""),
                                 protocol=str(getattr(ds, "ProtocolName", "") or ""),
                                 image_type=tuple(str(t) for t in ([image_type] if isinstance(image_type, str)
                                                                   else image_type)))
        )
        info.files.append(f)
    return series


def choose_series(
    series: dict[str, DicomSeriesInfo], folder: Path, *, series_uid: str | None, modality: str | None
) -> DicomSeriesInfo:
    """Pick one series: by UID, else by modality, else the only one; otherwise list them in an error."""
    if not series:
        kind = "is an empty folder" if not any(folder.iterdir()) else "holds no DICOM series (and no volume file)"
        raise InputError(kind, path=folder)
    listing = "; ".join(s.summary() for s in series.values())
    if series_uid is not None:
        if series_uid not in series:
            raise DicomSeriesError(f"has no series {series_uid}; it holds: {listing}", path=folder)
        return series[series_uid]
    candidates = list(series.values())
    if modality is not None:
        candidates = [s for s in candidates if s.modality.upper() == modality.upper()]
        if not candidates:
            raise DicomSeriesError(f"has no {modality} series; it holds: {listing}", path=folder)
    if len(candidates) > 1:
        raise DicomSeriesError(
            f"holds {len(candidates)} series; choose one with --series-uid or --modality: {listing}", path=folder
        )
    return candidates[0]


def _read_dicom_folder(folder: Path, *, series_uid: str | None, modality: str | None) -> Volume:
    chosen = choose_series(scan_dicom(folder), folder, series_uid=series_uid, modality=modality)
    if len(chosen.files) == 1:  # one file: a single slice or an enhanced multi-frame image
        vol = _read_single_dicom(chosen.files[0])
        vol.source = folder
        return vol
    files, headers, regular = sort_series(chosen, folder)
    first = headers[0]
    what = f"series {chosen.series_uid}"
    if regular:
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames([str(f) for f in files])
        try:
            image = reader.Execute()
        except RuntimeError as exc:
            raise DicomSeriesError(f"{what} cannot be read: {_itk_reason(exc)}", path=folder) from None
        return Volume(image=image, source=folder, modality=chosen.modality or None, dicom_link=_link_of(first))
    # tilted or irregularly spaced: read each slice (SimpleITK applies the rescale) and stack them ourselves
    pixels = np.stack([sitk.GetArrayFromImage(_sitk_read(f, "DICOM image")).reshape(int(h.Rows), int(h.Columns))
                       for f, h in zip(files, headers, strict=True)]).astype(np.float32)
    stack = FrameStack(pixels, np.array([[float(v) for v in h.ImagePositionPatient] for h in headers]),
                       np.asarray(first.ImageOrientationPatient, float),
                       tuple(float(v) for v in first.PixelSpacing))
    image, record = stack_to_image(stack, source=folder, what=what)
    return Volume(image=image, source=folder, modality=chosen.modality or None, dicom_link=_link_of(first),
                  reconstruction=record)


def sort_series(series: DicomSeriesInfo, folder: Path) -> tuple[list[Path], list[Any], bool]:
    """Sort a series' files along the slice normal and check that they form one volume.

    Returns:
        The sorted files, their headers (same order, pixels not read), and whether the stack is regular
        (untilted, uniform slice spacing): SimpleITK reads a regular stack as it is; any other is resampled by
        :func:`stack_to_image`.

    Raises:
        DicomSeriesError: missing orientation/position, mixed orientations or pixel spacings, duplicate positions,
            or whole slices missing from an otherwise regular stack.
    """
    headers = [(f, read_dicom_header(f)) for f in series.files]
    for f, ds in headers:
        check_pixel_data(ds, f)
    if len(headers) == 1:
        return [headers[0][0]], [headers[0][1]], True
    orients = defaultdict(list)
    for f, ds in headers:
        if "ImageOrientationPatient" not in ds or "ImagePositionPatient" not in ds:
            raise DicomSeriesError(f"{f.name} lacks ImageOrientationPatient/ImagePositionPatient", path=folder)
        key = (tuple(np.round(np.asarray(ds.ImageOrientationPatient, float), 4)),
               tuple(np.round(np.asarray(getattr(ds, "PixelSpacing", [0, 0]), float), 5)),
               (int(ds.Rows), int(ds.Columns)))
        orients[key].append(f)
    if len(orients) > 1:
        raise DicomSeriesError(
            f"series {series.series_uid} mixes {len(orients)} slice orientations or pixel grids; it is not one volume",
            path=folder,
        )
    iop = np.asarray(headers[0][1].ImageOrientationPatient, float)
    positions = np.array([np.asarray(ds.ImagePositionPatient, float) for _, ds in headers])
    layout = slice_layout(positions, np.cross(iop[:3], iop[3:]), what=f"series {series.series_uid}", source=folder)
    ordered = [headers[i] for i in layout.order]
    return [f for f, _ in ordered], [ds for _, ds in ordered], layout.regular


# --------------------------------------------------------------------------------------------- slice stacks


@dataclass
class SliceLayout:
    """Where a stack's slices lie along the slice normal (sorted), and whether they form a regular grid."""

    order: np.ndarray  #: slice indices sorted along the normal
    along: np.ndarray  #: sorted positions along the normal (mm)
    steps: np.ndarray  #: distances between neighbouring slices (mm)
    tilt_deg: float  #: largest angle between a slice-to-slice step and the normal (a gantry tilt)
    uniform: bool  #: steps equal within 1 %

    @property
    def step(self) -> float:
        return float(np.median(self.steps))

    @property
    def regular(self) -> bool:
        return self.uniform and self.tilt_deg <= 0.5


def slice_layout(positions: np.ndarray, normal: np.ndarray, *, what: str, source: Path) -> SliceLayout:
    """Sort slices along ``normal`` and measure their spacing and tilt.

    Raises:
        DicomSeriesError: duplicate positions, or whole slices missing from an otherwise regular stack (an
            incomplete copy must be reported, not interpolated over).
    """
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    positions, along = positions[order], along[order]
    if len(along) < 2:
        return SliceLayout(order, along, np.array([1.0]), 0.0, True)
    steps = np.diff(along)
    if np.any(steps < 1e-3):
        raise DicomSeriesError(f"{what} has duplicate slice positions", path=source)
    deltas = np.diff(positions, axis=0)
    cosines = np.abs(deltas @ normal) / np.linalg.norm(deltas, axis=1)
    tilt = math.degrees(math.acos(float(np.clip(cosines.min(), -1, 1))))
    step = float(np.median(steps))
    uniform = bool(np.max(np.abs(steps - step)) <= max(0.01, 0.01 * step))
    if not uniform:
        ratios = steps / step
        if np.any(ratios > 1.5) and np.allclose(ratios, np.round(ratios), atol=0.05):
            raise DicomSeriesError(
                f"{what} is missing {int(np.sum(np.round(ratios) - 1))} slice(s): positions jump by "
                f"{steps.max():.3g} mm where the spacing is {step:.3g} mm", path=source)
    return SliceLayout(order, along, steps, tilt, uniform)


@dataclass
class FrameStack:
    """2D slices with their patient positions: what a classic series or an enhanced multi-frame file holds.

    Attributes:
        pixels: (K, rows, cols) values after rescale (HU for CT).
        positions: (K, 3) ImagePositionPatient of each slice (LPS, mm).
        orientation: ImageOrientationPatient (row direction, then column direction).
        pixel_spacing: DICOM PixelSpacing: (between rows, between columns) in mm.
    """

    pixels: np.ndarray
    positions: np.ndarray
    orientation: np.ndarray
    pixel_spacing: tuple[float, float]


def stack_to_image(stack: FrameStack, *, source: Path, what: str) -> tuple[sitk.Image, dict[str, Any] | None]:
    """Build a volume from slices; a tilted or irregularly spaced stack is resampled onto a rectilinear grid.

    A regular stack (slice positions along the slice normal, uniform steps) becomes the image with direction
    (row, column, normal) as it is. Otherwise every slice is shifted in its own plane onto the columns of the
    first slice (linear interpolation: this removes a gantry tilt's shear) and the shifted slices are
    interpolated linearly along the normal onto uniform steps: the rectilinear grid that dcm2niix's tilt
    correction produces, keeping the slice plane's own row and column directions. Voxels no slice covers get
    the stack's minimum value.

    Returns:
        The image, and None for a regular stack or a record of what was done.

    Raises:
        DicomSeriesError: duplicate slice positions, or whole slices missing from an otherwise regular stack
            (an incomplete copy must not be interpolated over).
    """
    r, c = stack.orientation[:3], stack.orientation[3:]
    n = np.cross(r, c)
    layout = slice_layout(stack.positions, n, what=what, source=source)
    pixels, positions = stack.pixels[layout.order], stack.positions[layout.order]
    row_sp, col_sp = (float(v) for v in stack.pixel_spacing)
    k, steps, step = len(layout.order), layout.steps, layout.step
    direction = np.stack([r, c, n], axis=1)
    if layout.regular:
        image = sitk.GetImageFromArray(np.ascontiguousarray(pixels))
        image.SetSpacing((col_sp, row_sp, step))
        image.SetOrigin(tuple(float(v) for v in positions[0]))
        image.SetDirection(tuple(float(v) for v in direction.ravel()))
        return image, None
    from scipy.ndimage import affine_transform

    offsets = positions - positions[0]
    a, b = offsets @ r / col_sp, offsets @ c / row_sp  # each slice's in-plane shift, in columns and rows
    x0, y0 = math.floor(a.min() + 1e-6), math.floor(b.min() + 1e-6)
    width = math.ceil(a.max() - 1e-6) - x0 + pixels.shape[2]
    height = math.ceil(b.max() - 1e-6) - y0 + pixels.shape[1]
    fill = float(pixels.min())
    s = layout.along - layout.along[0]
    regular = steps[steps >= 0.5 * step]  # an odd short step (a re-positioned acquisition) does not set the grid
    dz = float(regular.min())
    m_count = math.floor(s[-1] / dz + 1e-6) + 1
    shifted: dict[int, np.ndarray] = {}

    def on_grid(i: int) -> np.ndarray:
        if i not in shifted:
            shifted[i] = affine_transform(pixels[i].astype(np.float32), np.eye(2), offset=(y0 - b[i], x0 - a[i]),
                                          output_shape=(height, width), order=1, cval=fill)
        return shifted[i]

    out = np.empty((m_count, height, width), np.float32)
    for m in range(m_count):
        z = m * dz
        i = min(int(np.searchsorted(s, z + 1e-6, side="right")) - 1, k - 2)
        w = 0.0 if k == 1 else float(np.clip((z - s[i]) / (s[i + 1] - s[i]), 0.0, 1.0))
        out[m] = on_grid(i) if w < 1e-6 else (1 - w) * on_grid(i) + w * on_grid(i + 1)
    image = sitk.GetImageFromArray(out)
    image.SetSpacing((col_sp, row_sp, dz))
    image.SetOrigin(tuple(float(v) for v in positions[0] + x0 * col_sp * r + y0 * row_sp * c))
    image.SetDirection(tuple(float(v) for v in direction.ravel()))
    record = {"resampled_to_rectilinear_grid": True, "gantry_tilt_deg": round(layout.tilt_deg, 3),
              "slice_steps_mm": [round(float(steps.min()), 4), round(float(steps.max()), 4)],
              "slices_in": int(k), "slices_out": int(m_count), "slice_spacing_mm": dz,
              "interpolation": "linear (in-plane shift, then along the slice normal)"}
    return image, record
