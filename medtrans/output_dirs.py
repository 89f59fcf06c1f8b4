"""Output folders: which folder a command may write into, and that no two commands write into one at once.

A command writes only into a folder that is absent, empty or holds its own earlier output (recognised by
:data:`MARKER`), never into an input, and holds an exclusive lock on it (:data:`LOCK`, ``flock``) while it runs: a
second command aimed at the same folder is refused with one line naming the first, instead of both printing "ok"
while one's files replace the other's. The lock goes with the process (also on ``kill -9``): nothing to clean up.

Example:
    >>> import tempfile
    >>> with output_dir(Path(tempfile.mkdtemp()) / "out", kind="demo") as out:
    ...     (out / MARKER).is_file()
    True
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import medtrans
from medtrans.errors import OutputError
from medtrans.fsutil import write_json

T = TypeVar("T")

#: The file by which a command recognises a folder it wrote: ``{"kind": <command>, "medtrans": <version>}``.
MARKER = ".medtrans.json"


def _overlaps(a: Path, b: Path) -> bool:
    return a == b or a in b.parents or b in a.parents


def claim_output_dir(out: str | Path, *, kind: str, inputs: Iterable[str | Path] = (),
                     signatures: Iterable[str] = (), allow_nonempty: bool = False,
                     nonempty_option: bool = True) -> Path:
    """Make ``out`` ready to hold ``kind``'s output, or raise one clear error.

    ``out`` may be absent, empty, or hold this command's own earlier output (its :data:`MARKER`, or for
    folders written before the marker existed one of the ``signatures`` glob patterns). A folder holding
    anything else is refused unless ``allow_nonempty`` (``nonempty_option``: the command offers
    ``--allow-nonempty-out``, so the error may suggest it); ``out`` may never be, contain or lie inside an input.
    The folder is locked for this process until :func:`release_output_dir` (or the process ends).

    Raises:
        OutputError: a file where a folder is needed, overlap with an input, another command's or a user's
            folder, a folder another command is writing, or a folder that cannot be written.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputError("exists and is a file; --out must be a folder", path=out)
    resolved = out.resolve()
    for inp in inputs:
        if _overlaps(resolved, Path(inp).resolve()):
            raise OutputError(f"overlaps the input {inp}; choose an output folder outside the inputs", path=out)
    marker = out / MARKER
    if marker.is_file():
        try:
            owner = json.loads(marker.read_text()).get("kind")
        except (OSError, json.JSONDecodeError, AttributeError):
            owner = None
        if owner != kind:
            raise OutputError(f"holds medtrans {owner or 'unknown'} output, not {kind} output; choose another "
                              "folder", path=out)
    elif out.is_dir() and any(not e.name.startswith(".") for e in out.iterdir()):
        ours = any(next(out.glob(pattern), None) is not None for pattern in signatures)
        if not ours and not allow_nonempty:
            hint = " (or pass --allow-nonempty-out to write into it anyway)" if nonempty_option else ""
            raise OutputError(f"is not empty and was not written by medtrans {kind}; choose a new or empty "
                              f"folder{hint}", path=out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"could not be written: {exc.strerror or exc}", path=out) from None
    _lock(out, kind)
    if not marker.is_file():
        write_json(marker, {"kind": kind, "medtrans": medtrans.__version__})
    return out



#: The lock file a running command holds in its output folder (hidden: it never makes a folder "not empty").
LOCK = ".medtrans.lock"
_HELD: dict[Path, tuple[int, int]] = {}  # resolved folder -> (file descriptor, claims by this process)
_CLAIMS: list[Path] = []  # every claim of this process, in order (for :func:`releases_outputs`)


def _lock(out: Path, kind: str) -> None:
    """Hold ``out``'s lock for this process (a second claim by the same process only counts)."""
    key = out.resolve()
    _CLAIMS.append(key)
    if key in _HELD:
        fd, count = _HELD[key]
        _HELD[key] = (fd, count + 1)
        return
    try:
        import fcntl
    except ImportError:  # pragma: no cover - no flock (Windows): folders are not locked
        return
    try:
        fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise OutputError(f"could not be written: {exc.strerror or exc}", path=out) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.read(fd, 512).decode(errors="replace").strip() or "another process"
        os.close(fd)
        _CLAIMS.pop()
        raise OutputError(f"is being written by another medtrans command ({holder}); wait for it to finish or "
                          "choose another folder", path=out) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"medtrans {kind}, process {os.getpid()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}".encode())
    _HELD[key] = (fd, 1)


def release_output_dir(out: str | Path) -> None:
    """Give up this process's claim on ``out`` (the lock is released with the last claim)."""
    key = Path(out).resolve()
    if key not in _HELD:
        return
    fd, count = _HELD.pop(key)
    if count > 1:
        _HELD[key] = (fd, count - 1)
        return
    os.close(fd)  # closing the descriptor releases the flock


def releases_outputs(command: Callable[..., T]) -> Callable[..., T]:
    """Decorate a command function: the output folders it claims are released when it returns or raises (so that
    a later command of the same process, or another process, may write there)."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        mark = len(_CLAIMS)
        try:
            return command(*args, **kwargs)
        finally:
            while len(_CLAIMS) > mark:
                release_output_dir(_CLAIMS.pop())

    return wrapper


@contextlib.contextmanager
def output_dir(out: str | Path, *, kind: str, inputs: Iterable[str | Path] = (), signatures: Iterable[str] = (),
               allow_nonempty: bool = False, nonempty_option: bool = True) -> Iterator[Path]:
    """:func:`claim_output_dir` for the duration of a ``with`` block."""
    path = claim_output_dir(out, kind=kind, inputs=inputs, signatures=signatures, allow_nonempty=allow_nonempty,
                            nonempty_option=nonempty_option)
    try:
        yield path
    finally:
        release_output_dir(path)
