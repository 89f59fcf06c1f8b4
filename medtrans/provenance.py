"""What makes an output current: one type for every command that skips work on a rerun (prepare, convert).

An output records the :class:`Provenance` it was made from: the content hashes of its inputs, the settings that
decide it (a config section, output options) and the medtrans version. A rerun compares the recorded provenance with
the one it would make now: equal means current; otherwise :meth:`Provenance.stale_reason` says, in words, the first
difference. Outputs are never judged by the presence of files alone.

Example:
    >>> old = Provenance({"mr": "ab12"}, {"format": "nifti", "strict": False}).to_dict()
    >>> Provenance({"mr": "ab12"}, {"format": "nifti", "strict": True}).stale_reason(old)
    'option strict changed (False -> True)'
    >>> Provenance({"mr": "ab12"}, {"format": "nifti", "strict": False}).stale_reason(old) is None
    True
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import medtrans
from medtrans.fsutil import sha256_of

#: How an input is named in a reason (others by their key).
INPUT_NAMES = {"mr": "the input MR", "ct": "the input CT", "mask": "the input mask", "model": "the model"}


@dataclass(frozen=True)
class Provenance:
    """Inputs (name -> SHA-256), settings (name -> JSON value) and the medtrans version of an output."""

    inputs: dict[str, str]
    settings: dict[str, Any] = field(default_factory=dict)
    version: str = medtrans.__version__

    @classmethod
    def of_files(cls, files: dict[str, Path], settings: dict[str, Any]) -> Provenance:
        """Hash ``files`` (a folder: every file under it) and take ``settings``.

        Raises:
            OSError: an input cannot be read (the caller names it to the user).
        """
        return cls({name: sha256_of(path) for name, path in files.items()}, settings)

    def to_dict(self) -> dict[str, Any]:
        return {"inputs": dict(self.inputs), "settings": dict(self.settings), "medtrans": self.version}

    def key(self) -> str:
        """One hash of the whole provenance (for a record that keeps only a key)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()

    def stale_reason(self, recorded: dict[str, Any] | None) -> str | None:
        """None when ``recorded`` (an earlier :meth:`to_dict`) is this provenance; else the first difference."""
        if not isinstance(recorded, dict) or "inputs" not in recorded:
            return "it was made by an earlier medtrans (no provenance of this kind)"
        old_inputs = recorded.get("inputs") or {}
        for name, digest in self.inputs.items():
            if old_inputs.get(name) != digest:
                return f"{INPUT_NAMES.get(name, name)} changed"
        if set(old_inputs) != set(self.inputs):
            return "its inputs changed"
        old_settings = recorded.get("settings") or {}
        for name, value in self.settings.items():
            if old_settings.get(name) != value:
                return f"option {name} changed ({old_settings.get(name)} -> {value})"
        if recorded.get("medtrans") != self.version:
            return f"medtrans changed ({recorded.get('medtrans')} -> {self.version})"
        return None
