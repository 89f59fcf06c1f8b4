"""Finding DICOM series: headers grouped by SeriesInstanceUID (pixels never read), and the rule that picks one."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from medtrans.errors import DicomSeriesError, InputError

#: Volume files a DICOM scan passes over (the readers of :mod:`medtrans.io` read them by name).
VOLUME_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr")
#: Attributes a derived series copies from its source so that it joins the same patient, study and frame of
#: reference (carried in memory, never logged). PatientPosition (HFS, FFS, ...) describes the same acquisition.
LINK_ATTRIBUTES = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyID",
    "StudyDate", "StudyTime", "AccessionNumber", "ReferringPhysicianName", "FrameOfReferenceUID", "PatientPosition",
)
_LOCALIZER_NAMES = re.compile(r"\b(localizer|localiser|loc|scout|survey|topogram|3[- ]?plane|aahead_scout)\b",
                              re.IGNORECASE)


def series_pattern(text: str, *, option: str) -> re.Pattern[str]:
    """``text`` compiled as a case-insensitive regular expression, or one clear error naming ``option``.

    Example:
        >>> series_pattern("T1[", option="--mr-series")
        Traceback (most recent call last):
        ...
        medtrans.errors.InputError: --mr-series 'T1[': not a valid regular expression (unterminated character set at position 2); escape special characters, e.g. 'T1\\\\['
    """
    try:
        return re.compile(text, flags=re.IGNORECASE)
    except re.error as exc:
        raise InputError(f"{option} {text!r}: not a valid regular expression ({exc}); escape special characters, "
                         f"e.g. {re.escape(text)!r}") from None


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
            series_pattern(pattern, option="series pattern").search(f"{self.description}\n{self.protocol}"))


def _files_below(folder: Path, recursive: bool) -> list[Path]:
    """Files in ``folder`` (and below, following symbolic links to folders, each real folder once)."""
    if not recursive:
        return sorted(folder.iterdir())
    found, seen = [], set()
    for root, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:  # a link cycle, or the same folder linked twice
            dirs[:] = []
            continue
        seen.add(real)
        dirs.sort()
        found += [Path(root) / f for f in files]
    return sorted(found)


def scan_dicom(folder: Path, *, recursive: bool = False) -> dict[str, DicomSeriesInfo]:
    """Group the DICOM files under ``folder`` by SeriesInstanceUID (headers only, non-DICOM skipped)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    series: dict[str, DicomSeriesInfo] = {}
    for f in _files_below(folder, recursive):
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
