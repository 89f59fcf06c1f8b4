"""Files SimpleITK reads and writes itself: MHA/MHD, NRRD, and NIfTI's header and geometry."""

from __future__ import annotations

from pathlib import Path

import SimpleITK as sitk

from medtrans.errors import InputError, OutputError


def itk_reason(exc: Exception) -> str:
    """The line of an ITK exception that says what went wrong (its first lines are source locations)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for ln in reversed(lines):
        if not ln.startswith(("sitk::", "/", "itk::ERROR")) or "ERROR" in ln:
            return ln.split("): ")[-1][:300]
    return (lines[-1] if lines else str(exc))[:300]


def sitk_read(path: Path, what: str) -> sitk.Image:
    """``sitk.ReadImage`` with one clear error naming the file."""
    if path.stat().st_size == 0:
        raise InputError(f"is an empty file, not a {what}", path=path)
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise InputError(f"cannot be read as an {what}: {itk_reason(exc)}", path=path) from None


def sitk_write(image: sitk.Image, tmp: Path, final: Path, *, compress: bool) -> None:
    """``sitk.WriteImage`` into ``tmp`` with one clear error naming ``final``."""
    try:
        sitk.WriteImage(image, str(tmp), useCompression=compress)
    except RuntimeError as exc:  # some ITK writers do raise (MetaImage on a full disk)
        raise OutputError(f"could not be written: {itk_reason(exc)}", path=final) from None
