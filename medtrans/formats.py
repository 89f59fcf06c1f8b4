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
#: The record ``convert`` writes last into each case folder; its presence marks the case complete.
SCT_RECORD = "sct.json"


def find_sct(case_dir: Path) -> Path | None:
    """The sCT in a case folder: the output its ``sct.json`` names, else the first registry name present.

    Folders written by other tools (no ``sct.json``) are read by the registry names alone.
    """
    record = case_dir / SCT_RECORD
    if record.is_file():
        try:
            name = json.loads(record.read_text()).get("output")
        except (OSError, json.JSONDecodeError, AttributeError):
            name = None
        return case_dir / name if name and (case_dir / name).exists() else None
    for name in SCT_OUTPUTS.values():
        if (case_dir / name).exists():
            return case_dir / name
    return None


def remove_outputs(case_dir: Path, *, keep: str | None = None) -> None:
    """Remove a case's record and every registered sCT output except ``keep`` (ours to remove: never inputs)."""
    (case_dir / SCT_RECORD).unlink(missing_ok=True)
    for name in SCT_OUTPUTS.values():
        p = case_dir / name
        if name == keep or not p.exists():
            continue
        shutil.rmtree(p) if p.is_dir() else p.unlink()
