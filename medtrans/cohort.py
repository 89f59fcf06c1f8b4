"""Discovering cases in a folder: SynthRAD layout, generic volume files, DICOM series.

A *case* is one patient folder holding an MR (``mr.nii.gz``/``mr.mha``/``mr.nrrd``/``mr/`` DICOM, or DICOM
series anywhere below it told apart by Modality), optionally a CT and a mask. A *cohort* is a folder of
case folders. Case names come from folder names, sanitized before they become paths.

Which DICOM series of a modality is used (the default rule, documented in ``docs/data_layouts.md``):
with ``--mr-series``/``--ct-series PATTERN`` the one series whose description, protocol name (a
case-insensitive regular expression) or UID matches; otherwise the one series left after localizers
(ImageType LOCALIZER, or named localizer/scout/survey/topogram) and derived series (ImageType DERIVED) are set
aside. Anything else is a per-case error that lists the candidates.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from medtrans.errors import DicomSeriesError, InputError
from medtrans.fsutil import sanitize_name
from medtrans.io import VOLUME_SUFFIXES, DicomSeriesInfo, scan_dicom, series_pattern


@dataclass(frozen=True)
class Source:
    """Where one image of a case lives: a file, or a folder plus the DICOM series to read there."""

    path: Path
    series_uid: str | None = None
    series_description: str | None = None

    def describe(self) -> str:
        if not self.series_uid:
            return str(self.path)
        return f"{self.path} (DICOM series '{self.series_description or ''}', {self.series_uid})"


@dataclass
class Case:
    """One patient: its sources, and an error if discovery already found it unusable."""

    name: str
    folder: Path
    mr: Source | None = None
    ct: Source | None = None
    mask: Source | None = None
    errors: list[str] = field(default_factory=list)


def case_name(folder_name: str) -> str:
    """A case's name from its folder's: the name itself when it is a safe path component; otherwise its sanitized
    form with a short hash of the original, so that two folders never share a name and adding a case never renames
    another (``Patiënt 01`` and ``Patiënt_01`` sanitize alike).

    Example:
        >>> case_name("p01"), case_name("Patiënt 01") != case_name("Patiënt_01")
        ('p01', True)
    """
    safe = sanitize_name(folder_name)
    return safe if safe == folder_name else f"{safe}-{hashlib.sha1(folder_name.encode()).hexdigest()[:6]}"


def find_role_file(folder: Path, *stems: str) -> Path | None:
    """The ``<stem><suffix>`` volume file in ``folder`` for the first stem that has one.

    Raises:
        InputError: a stem has files with several suffixes (e.g. ``mr.nii.gz`` and ``mr.mha``): which one is
            meant cannot be guessed.
    """
    for stem in stems:
        found = [folder / f"{stem}{suffix}" for suffix in VOLUME_SUFFIXES if (folder / f"{stem}{suffix}").is_file()]
        if len(found) > 1:
            raise InputError(f"holds {len(found)} '{stem}' images ({', '.join(p.name for p in found)}); keep one per "
                             "case", path=folder)
        if found:
            return found[0]
    return None


def choose_role_series(found: list[DicomSeriesInfo], modality: str, pattern: str | None) -> DicomSeriesInfo:
    """One series of ``modality`` by the module's rule (pattern, else the only non-localizer, non-derived one).

    Raises:
        DicomSeriesError: no series or several fit; the message lists the candidates and how to choose.
    """
    flag = f"--{modality.lower()}-series"
    listing = "; ".join(s.summary() + (f" [{s.skip_reason}]" if s.skip_reason else "") for s in found)
    if pattern:
        hits = [s for s in found if s.matches(pattern)]
        if len(hits) == 1:
            return hits[0]
        what = "no" if not hits else f"{len(hits)}"
        raise DicomSeriesError(f"{what} {modality} series match {flag} {pattern!r}; the candidates are: {listing}")
    usable = [s for s in found if s.skip_reason is None]
    if len(usable) == 1:
        return usable[0]
    if not usable:
        raise DicomSeriesError(f"every {modality} series is a localizer or derived; choose one with {flag} PATTERN: "
                               f"{listing}")
    raise DicomSeriesError(f"{len(usable)} {modality} series could be meant; choose one with {flag} PATTERN "
                           f"(matched on description, protocol or UID): {listing}")


def _dicom_sources(series: dict[str, DicomSeriesInfo], folder: Path, case: Case,
                   patterns: Mapping[str, str | None]) -> None:
    for role, modality in (("mr", "MR"), ("ct", "CT")):
        if getattr(case, role) is not None:
            continue
        found = [s for s in series.values() if s.modality.upper() == modality]
        if not found:
            continue
        try:
            chosen = choose_role_series(found, modality, patterns.get(role))
        except DicomSeriesError as exc:
            case.errors.append(f"{folder}: {exc}")
            continue
        parents = {f.parent for f in chosen.files}
        if len(parents) > 1:
            case.errors.append(f"the {modality} series under {folder} is spread over {len(parents)} folders")
        else:
            setattr(case, role, Source(parents.pop(), chosen.series_uid, chosen.description))


def case_from_folder(folder: Path, *, mr_series: str | None = None, ct_series: str | None = None) -> Case | None:
    """Read one case folder (SynthRAD names first, then DICOM series by modality).

    Returns None for a folder that holds no MR/CT file, no ``mr``/``ct`` folder and no DICOM: not a case.
    """
    case = Case(name=case_name(folder.name), folder=folder)
    for role in ("mr", "ct", "mask"):
        try:
            f = find_role_file(folder, role)
        except InputError as exc:
            case.errors.append(str(exc))
            continue
        if f is not None:
            setattr(case, role, Source(f))
    if case.errors:
        return case
    if case.mr is None or case.ct is None:
        series = scan_dicom(folder, recursive=True)  # one header scan per case folder
        named = case.mr or case.ct or (folder / "mr").is_dir() or (folder / "ct").is_dir()
        if not series and not named:
            return None
        _dicom_sources(series, folder, case, {"mr": mr_series, "ct": ct_series})
    if case.mr is None and not case.errors:
        case.errors.append(f"no MR found in {folder} (expected mr.nii.gz, mr.mha, mr.nrrd or an MR DICOM series)")
    return case


def discover(path: str | Path, *, mr_series: str | None = None, ct_series: str | None = None) -> list[Case]:
    """Find the cases under ``path``: a single MR file, a DICOM series folder, a case folder or a cohort.

    ``mr_series``/``ct_series`` choose among several DICOM series of a modality (see the module docstring).

    Raises:
        InputError: the path does not exist or holds no case at all.
    """
    path = Path(path)
    for option, pattern in (("--mr-series", mr_series), ("--ct-series", ct_series)):
        if pattern:
            series_pattern(pattern, option=option)  # a bad pattern fails here, once, not in every case
    if not path.exists():
        raise InputError("does not exist", path=path)
    if path.is_file():
        stem = path.name
        for suffix in VOLUME_SUFFIXES:
            if stem.lower().endswith(suffix):
                stem = stem[: -len(suffix)]
        return [Case(name=case_name(stem), folder=path.parent, mr=Source(path))]
    direct = scan_dicom(path)
    if direct:  # a DICOM series folder itself
        case = Case(name=case_name(path.name), folder=path)
        _dicom_sources(direct, path, case, {"mr": mr_series, "ct": ct_series})
        if case.mr is None and not case.errors:
            raise DicomSeriesError("holds DICOM but no MR series", path=path)
        return [case]
    if find_role_file(path, "mr", "ct") or (path / "mr").is_dir():
        return [case_from_folder(path, mr_series=mr_series, ct_series=ct_series)]
    subdirs = sorted(d for d in path.iterdir() if d.is_dir() and not d.name.startswith((".", "_")))
    cases = [c for d in subdirs if (c := case_from_folder(d, mr_series=mr_series, ct_series=ct_series)) is not None]
    if not cases:
        raise InputError("holds no cases (no case folders with mr/ct images or DICOM series)", path=path)
    names = [c.name for c in cases]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:  # only a folder literally named like another's sanitized form with its hash
        raise InputError(f"holds case folders whose names collide ({', '.join(dupes)}); rename one of them", path=path)
    return cases
