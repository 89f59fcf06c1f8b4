"""NIfTI bytes: one ISA-L decompression per read (gzip CRC and length verified), truncation and NaN/Inf checks on
the stored voxels (SimpleITK's reader hides both), and ``.nii.gz`` writing verified byte for byte."""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from medtrans.errors import InputError, OutputError
from medtrans.fsutil import atomic_path
from medtrans.io.itk_files import itk_reason, sitk_read, sitk_write

#: gzip level of written ``.nii.gz`` files: ISA-L's level 2 compresses like zlib's default (6) at ~20x the speed.
GZIP_LEVEL = 2
NIFTI_SUFFIXES = (".nii.gz", ".nii")


def gzip_module() -> Any:
    """ISA-L's gzip (python-isal: several times faster than zlib, same format) where installed, else the stdlib's."""
    try:
        from isal import igzip
    except ImportError:  # pragma: no cover - isal is a dependency; a platform without a wheel falls back
        import gzip as igzip
    return igzip


def _gzip_errors() -> tuple[type[Exception], ...]:
    import zlib

    errors: tuple[type[Exception], ...] = (OSError, EOFError, ValueError, zlib.error)
    try:
        from isal.isal_zlib import error as isal_error
    except ImportError:  # pragma: no cover
        return errors
    return (*errors, isal_error)


def nifti_bytes(path: Path) -> bytes:
    """The uncompressed bytes of a ``.nii``/``.nii.gz`` file (gzip's CRC and length verified).

    Raises:
        InputError: the gzip stream is damaged or cut short.
    """
    data = path.read_bytes()
    if not path.name.lower().endswith(".gz"):
        return data
    try:
        return gzip_module().decompress(data)
    except _gzip_errors() as exc:
        raise InputError(f"is a damaged NIfTI file: its gzip data is broken or cut short ({exc})",
                         path=path) from None


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


def nonfinite_count(values: np.ndarray) -> int:
    """NaN and infinite voxels among ``values`` (0 for integer data)."""
    if not np.issubdtype(values.dtype, np.floating):
        return 0
    return int(values.size - np.count_nonzero(np.isfinite(values)))


def read_nifti(path: Path) -> tuple[sitk.Image, int]:
    """A NIfTI file as a SimpleITK image (ITK interprets the header and geometry), and its stored NaN/Inf count.

    A ``.nii.gz`` is decompressed once, by ISA-L: the bytes are checked, then handed to ITK as an uncompressed
    temporary ``.nii`` (ITK's own zlib inflate would cost as much as reading again).
    """
    raw = nifti_bytes(path)
    bad = nonfinite_count(nifti_voxels(raw, path))
    if not path.name.lower().endswith(".gz"):
        return sitk_read(path, "image"), bad
    fd, name = tempfile.mkstemp(prefix=".medtrans-read.", suffix=".nii")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
        del raw
        image = sitk.ReadImage(name)
    except RuntimeError as exc:
        raise InputError(f"cannot be read as an image: {itk_reason(exc)}", path=path) from None
    except OSError as exc:  # the temporary copy could not be written (no space in the temp folder)
        raise InputError(f"cannot be read: no room for its uncompressed copy in {tempfile.gettempdir()} ({exc})",
                         path=path) from None
    finally:
        Path(name).unlink(missing_ok=True)
    return image, bad


def _require_voxels(raw: bytes, image: sitk.Image, final: Path) -> None:
    """The NIfTI bytes hold exactly the image's voxels (NaN where it has NaN)."""
    try:
        stored = nifti_voxels(raw, final)
    except InputError as exc:
        raise OutputError(f"was not written completely (disk full?): {exc}", path=final) from None
    want = sitk.GetArrayViewFromImage(image).ravel()
    if stored.shape != want.shape or not np.array_equal(stored, want, equal_nan=stored.dtype.kind == "f"):
        raise OutputError("reads back different from what was written (disk full?)", path=final)


def compress(raw: bytes) -> bytes:
    """gzip of ``raw`` at :data:`GZIP_LEVEL`: ISA-L on up to four threads where installed (independent deflate
    blocks in one gzip member; byte-identical from run to run), else the standard library's."""
    try:
        from isal import igzip_threaded
    except ImportError:  # pragma: no cover
        return gzip_module().compress(raw, compresslevel=GZIP_LEVEL)

    class _Buffer(io.BytesIO):
        def close(self) -> None:  # the gzip writer closes its file object; the bytes are still wanted
            pass

    buffer = _Buffer()
    with igzip_threaded.open(buffer, "wb", compresslevel=GZIP_LEVEL, threads=min(4, os.cpu_count() or 1)) as fh:
        fh.write(raw)
    return buffer.getvalue()


def write_nifti_gz(image: sitk.Image, path: Path) -> None:
    """Write a ``.nii.gz``: SimpleITK writes it uncompressed (it owns the header and geometry), the stored voxels are
    compared with the image, ISA-L compresses it, and the file takes its name only after reading it back gives
    exactly the compressed bytes (a short write on a full disk is caught there)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name.split('.')[0]}.", suffix=".tmp.nii", dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise OutputError(f"could not be written: {exc}", path=path) from None
    plain = Path(name)
    try:
        sitk_write(image, plain, path, compress=False)
        raw = plain.read_bytes()
    except OSError as exc:
        raise OutputError(f"could not be written: {exc}", path=path) from None
    finally:
        plain.unlink(missing_ok=True)
    _require_voxels(raw, image, path)
    packed = compress(raw)
    del raw

    def verify(tmp: Path) -> None:
        if tmp.read_bytes() != packed:
            raise OutputError("reads back different from what was written (disk full?)", path=path)

    with atomic_path(path, verify=verify) as tmp:
        tmp.write_bytes(packed)
