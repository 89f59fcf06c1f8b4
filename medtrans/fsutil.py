"""Filesystem helpers: verified atomic writes, output folders a command can claim, safe names, content hashes.

The output contract every command follows: nothing appears under its final name unless it was written completely
(a temporary file, checked, then renamed); the folders a command writes into are claimed by
:mod:`medtrans.output_dirs`. What is written gets the permissions the user's umask gives a new file.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from medtrans.errors import DatasetError, OutputError

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def sanitize_name(name: str) -> str:
    """Turn any folder or series name into a safe single path component.

    Example:
        >>> sanitize_name("../Pat 01/ä")
        'Pat_01'
        >>> sanitize_name("..")
        'case'
    """
    cleaned = _UNSAFE.sub("_", name).strip("._")
    return cleaned[:100] or "case"


#: Below this much free space a failed write is reported as the full disk it almost surely was (MB).
FULL_DISK_MB = 64


def _write_failed(path: Path, exc: BaseException) -> OutputError:
    """One line for a failed write; a library's internal message (torch's zip writer says "[enforce fail ...
    unexpected pos]") gives way to what happened when the file system is (nearly) full."""
    import errno

    free = _free_mb(path)
    if (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or (free is not None and free < FULL_DISK_MB):
        return OutputError(f"could not be written: no space left on the device ({free:.0f} MB free)"
                           if free is not None else "could not be written: no space left on the device", path=path)
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).splitlines()[0][:200]
    return OutputError(f"could not be written: {reason}", path=path)


def _free_mb(path: Path) -> float | None:
    for folder in (path.parent, *path.parents):
        if folder.exists():
            try:
                return shutil.disk_usage(folder).free / 2**20
            except OSError:
                return None
    return None


@functools.lru_cache(maxsize=1)
def umask() -> int:
    """The process's umask (read from /proc where it can be, so that it is never set to 0 even for a moment)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(final: str | Path, *, verify: Callable[[Path], None] | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it onto ``final`` only if the block succeeds.

    The temporary name keeps ``final``'s suffixes so that writers that infer the format from the
    extension (SimpleITK, numpy) still work. A crash leaves ``final`` untouched (old or absent).

    Args:
        final: the file's final name.
        verify: called with the temporary path before the rename; it raises if the file is incomplete.
            Some writers (SimpleITK's) report a short write (disk full) only on stderr, so a file they
            wrote is checked by reading it back before it may take its final name.

    Raises:
        OutputError: the file could not be written (disk full, read-only folder, failed verification).
    """
    final = Path(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        suffix = "".join(final.suffixes)
        fd, tmp = tempfile.mkstemp(prefix=f".{final.name.split('.')[0]}.", suffix=f".tmp{suffix}",
                                   dir=final.parent)
        os.close(fd)
    except OSError as exc:
        raise _write_failed(final, exc) from None
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if verify is not None:
            verify(tmp_path)
        os.chmod(tmp_path, 0o666 & ~umask())  # mkstemp made it 0600: give it what a new file would get
        os.replace(tmp_path, final)
    except OSError as exc:
        raise _write_failed(final, exc) from None
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    """Like :func:`atomic_path` for a folder: build it under a temporary name, then swap it in."""
    final = Path(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    except OSError as exc:
        raise _write_failed(final, exc) from None
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~umask())  # mkdtemp made it 0700
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except OSError as exc:
        raise _write_failed(final, exc) from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


_STALE_TEMP = re.compile(r"^\..+\.tmp(\.|$)")


def sweep_stale_temps(folder: str | Path) -> list[str]:
    """Remove what killed atomic writes left in ``folder`` (hidden ``.<name>.<random>.tmp*`` files or folders).

    Call it only on an output folder this process is about to (re)write: the names are the ones
    :func:`atomic_path` and :func:`atomic_dir` create, never a user's file.
    """
    folder = Path(folder)
    removed = []
    if folder.is_dir():
        for entry in folder.iterdir():
            if _STALE_TEMP.match(entry.name):
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
                removed.append(entry.name)
    return removed


def finite_json(data: Any) -> Any:
    """``data`` with every NaN or infinite float replaced by None (JSON has no such numbers).

    Example:
        >>> finite_json({"mae": float("inf"), "n": [1.5, float("nan")]})
        {'mae': None, 'n': [1.5, None]}
    """
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: finite_json(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [finite_json(v) for v in data]
    return data


def write_json(path: str | Path, data: Any) -> None:
    """Write strict JSON atomically (non-finite numbers become null; insertion order is kept for readability)."""
    text = json.dumps(finite_json(data), indent=2, default=_json_default, allow_nan=False) + "\n"
    write_text(path, text)


def write_text(path: str | Path, text: str) -> None:
    """Write a text file atomically, checking that every byte reached the file before it is renamed."""
    payload = text.encode()

    def complete(tmp: Path) -> None:
        if tmp.stat().st_size != len(payload):
            raise OutputError(f"short write ({tmp.stat().st_size} of {len(payload)} bytes)", path=path)

    with atomic_path(path, verify=complete) as tmp:
        tmp.write_bytes(payload)


def save_torch(path: str | Path, obj: Any) -> None:
    """``torch.save`` atomically; a failed write (disk full) becomes an :class:`OutputError` naming the file."""
    import torch

    with atomic_path(path) as tmp:
        try:
            torch.save(obj, tmp)
        except RuntimeError as exc:  # torch reports a short write as a RuntimeError from its zip writer
            raise _write_failed(Path(path), exc) from None


def load_torch(path: str | Path, *, what: str) -> Any:
    """``torch.load(weights_only=True)`` with one clear error for a damaged, foreign or unsafe file.

    PyTorch's own message for a refused file suggests ``weights_only=False``, which would run arbitrary code
    from the file; that advice is never passed on.
    """
    import pickle
    import zipfile

    import torch

    path = Path(path)
    try:
        with warnings.catch_warnings():  # torch warns on stderr about odd pickle protocols of damaged files
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "unsupported global" in str(exc).lower():  # a well-formed pickle that names code to run: refused
            raise DatasetError(
                f"refused as {what}: it holds objects other than tensors and plain values (code or classes it would "
                "run on loading; it may not come from medtrans, or may be unsafe to load)", path=path) from None
        raise DatasetError(f"cannot be loaded as {what}: it is damaged or not a PyTorch weights file",
                           path=path) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as exc:
        first = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise DatasetError(f"cannot be loaded as {what}: it is damaged or not a PyTorch weights file ({first})",
                           path=path) from None


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def sha256_of(path: str | Path) -> str:
    """SHA-256 of a file, or of every file under a folder (sorted by relative path)."""
    path = Path(path)
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        if path.is_dir():
            h.update(str(f.relative_to(path)).encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()
