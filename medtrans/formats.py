"""Synthetic CT output formats: the one registry that ``convert`` writes, ``evaluate`` reads and the CLI offers.

Every format is read back by :func:`medtrans.io.read_volume` (a file, or a DICOM series folder), so adding a
format is one entry here plus its writer in :mod:`medtrans.convert`.

Example:
    >>> SCT_OUTPUTS["dicom"]
    'sct_dicom'
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

#: format name -> what ``convert`` writes into ``OUT/<case>/``.
SCT_OUTPUTS: dict[str, str] = {"nifti": "sct.nii.gz", "mha": "sct.mha", "dicom": "sct_dicom"}
#: format name -> the uncertainty map ``convert --uncertainty`` writes beside the sCT (NIfTI beside a DICOM series).
UNCERTAINTY_OUTPUTS: dict[str, str] = {"nifti": "sct_uncertainty.nii.gz", "mha": "sct_uncertainty.mha",
                                       "dicom": "sct_uncertainty.nii.gz"}
#: The record ``convert`` writes last into each case folder; its presence marks the case complete.
SCT_RECORD = "sct.json"


def sct_record(case_dir: Path) -> dict | None:
    """A case's ``sct.json`` (None when absent or unreadable)."""
    try:
        record = json.loads((case_dir / SCT_RECORD).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) else None


def find_sct(case_dir: Path) -> Path | None:
    """The sCT in a case folder: the output its ``sct.json`` names, else the first registry name present.

    Folders written by other tools (no ``sct.json``) are read by the registry names alone.
    """
    if (case_dir / SCT_RECORD).is_file():
        name = (sct_record(case_dir) or {}).get("output")
        return case_dir / name if name and (case_dir / name).exists() else None
    for name in SCT_OUTPUTS.values():
        if (case_dir / name).exists():
            return case_dir / name
    return None


def remove_outputs(case_dir: Path, *, keep: str | None = None) -> None:
    """Remove a case's record and every registered sCT output except ``keep`` (ours to remove: never inputs)."""
    (case_dir / SCT_RECORD).unlink(missing_ok=True)
    for name in {*SCT_OUTPUTS.values(), *UNCERTAINTY_OUTPUTS.values()}:
        p = case_dir / name
        if name == keep or not p.exists():
            continue
        shutil.rmtree(p) if p.is_dir() else p.unlink()


def find_uncertainty(case_dir: Path) -> Path | None:
    """The uncertainty map ``convert --uncertainty`` wrote in a case folder (named by its ``sct.json``), or None."""
    name = ((sct_record(case_dir) or {}).get("uncertainty") or {}).get("output")
    return case_dir / name if name and (case_dir / name).is_file() else None
