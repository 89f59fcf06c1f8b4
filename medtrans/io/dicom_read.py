"""Reading DICOM: a series folder (sorted along the slice normal and checked before SimpleITK/GDCM reads it, which
applies RescaleSlope/Intercept, so CT comes out in HU), a single file, and enhanced multi-frame CT/MR."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from medtrans.errors import DicomSeriesError, InputError
from medtrans.io.dicom_scan import LINK_ATTRIBUTES, VOLUME_SUFFIXES, DicomSeriesInfo, choose_series, scan_dicom
from medtrans.io.itk_files import itk_reason, sitk_read
from medtrans.io.slice_stacks import FrameStack, slice_layout, stack_to_image
from medtrans.io.volume import Volume

#: Transfer syntaxes whose PixelData is stored uncompressed, so that its exact length is known.
_NATIVE_SYNTAXES = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2")


def read_dicom_header(path: Path) -> Any:
    """Read a DICOM file's attributes without its pixels (their length and offset stay known)."""
    import pydicom

    return pydicom.dcmread(path, defer_size=1024)


def link_of(ds: Any) -> dict[str, Any]:
    """The attributes a derived series repeats to join ``ds``'s patient, study and frame of reference."""
    return {k: str(getattr(ds, k)) for k in LINK_ATTRIBUTES if k in ds}


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


def read_single_dicom(path: Path) -> Volume:
    """One DICOM file: a single slice, or an enhanced multi-frame volume."""
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
        stack = enhanced_frames(ds, path)
        image, record = stack_to_image(stack, source=path, what="the enhanced multi-frame image")
        note = {"enhanced_multiframe": True, "frames": len(stack.positions), **(record or {})}
        return Volume(image=image, source=path, modality=modality, dicom_link=link_of(ds), reconstruction=note)
    image = sitk_read(path, "DICOM image")
    return Volume(image=image, source=path, modality=modality, dicom_link=link_of(ds))


def enhanced_frames(ds: Any, path: Path) -> FrameStack:
    """The frames of an enhanced image with their geometry (per-frame groups override shared ones).

    Raises:
        DicomSeriesError: per-frame groups that do not match the frame count, a frame without plane position,
            orientation or pixel spacing (its place in the patient is unknown: nothing may be invented), or frames
            of mixed orientations or spacings.
    """
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    per = ds.get("PerFrameFunctionalGroupsSequence") or []
    shared = (ds.get("SharedFunctionalGroupsSequence") or [None])[0]
    if len(per) != frames:
        raise DicomSeriesError(f"the enhanced multi-frame image has {len(per)} per-frame functional group(s) for "
                               f"{frames} frame(s): its frames cannot be placed in the patient", path=path)

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
            raise DicomSeriesError(f"frame {i + 1} of {frames} of the enhanced multi-frame image has no plane "
                                   "position, orientation or pixel spacing: its geometry is unknown", path=path)
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


def read_dicom_folder(folder: Path, *, series_uid: str | None = None, modality: str | None = None) -> Volume:
    """The series in ``folder`` (chosen by UID or modality where it holds several), checked and read."""
    chosen = choose_series(scan_dicom(folder), folder, series_uid=series_uid, modality=modality)
    if len(chosen.files) == 1:  # one file: a single slice or an enhanced multi-frame image
        vol = read_single_dicom(chosen.files[0])
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
            raise DicomSeriesError(f"{what} cannot be read: {itk_reason(exc)}", path=folder) from None
        return Volume(image=image, source=folder, modality=chosen.modality or None, dicom_link=link_of(first))
    # tilted or irregularly spaced: read each slice (SimpleITK applies the rescale) and stack them ourselves
    pixels = np.stack([sitk.GetArrayFromImage(sitk_read(f, "DICOM image")).reshape(int(h.Rows), int(h.Columns))
                       for f, h in zip(files, headers, strict=True)]).astype(np.float32)
    stack = FrameStack(pixels, np.array([[float(v) for v in h.ImagePositionPatient] for h in headers]),
                       np.asarray(first.ImageOrientationPatient, float),
                       tuple(float(v) for v in first.PixelSpacing))
    image, record = stack_to_image(stack, source=folder, what=what)
    return Volume(image=image, source=folder, modality=chosen.modality or None, dicom_link=link_of(first),
                  reconstruction=record)


def sort_series(series: DicomSeriesInfo, folder: Path) -> tuple[list[Path], list[Any], bool]:
    """Sort a series' files along the slice normal and check that they form one volume.

    Returns:
        The sorted files, their headers (same order, pixels not read), and whether the stack is regular
        (untilted, uniform slice spacing): SimpleITK reads a regular stack as it is; any other is resampled by
        :func:`medtrans.io.slice_stacks.stack_to_image`.

    Raises:
        DicomSeriesError: missing orientation/position, mixed orientations or pixel spacings, duplicate positions,
            or whole slices missing.
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
