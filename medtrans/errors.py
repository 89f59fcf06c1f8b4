"""The exception hierarchy: every error a user can cause names the file and the problem."""

from __future__ import annotations

from pathlib import Path


class MedtransError(Exception):
    """Base class of every error medtrans raises on purpose.

    The CLI prints ``str(error)`` on one line and exits non-zero; a traceback is shown only with ``--debug``.
    """

    def __init__(self, message: str, *, path: str | Path | None = None) -> None:
        self.path = None if path is None else Path(path)
        super().__init__(f"{self.path}: {message}" if self.path is not None else message)


class InputError(MedtransError):
    """A file or folder that cannot be used as input (missing, unreadable, wrong kind)."""


class DicomSeriesError(InputError):
    """A DICOM folder whose series is ambiguous, incomplete or geometrically unsupported."""


class GeometryError(MedtransError):
    """Two images that must share a grid do not, or a grid that cannot be handled."""


class ConfigError(MedtransError):
    """An invalid configuration key or value."""


class OutputError(MedtransError):
    """An output that cannot be written completely (disk full, read-only, a folder that is not ours)."""


class DatasetError(MedtransError):
    """A prepared dataset or a model bundle that is empty, inconsistent or from another version."""
