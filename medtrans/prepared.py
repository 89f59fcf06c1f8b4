"""The prepared dataset on disk: the one home of ``medtrans prepare``'s file layout, read by training, evaluation,
the baselines and the demo.

``PREP/manifest.json`` lists every case's record, the resolved config and the patient-level split;
``PREP/<case>/`` holds the MR as given (``mr.nii.gz``), the CT registered onto its grid (``ct_registered.nii.gz``),
the body mask (``mask.nii.gz``), the transform (``ct_to_mr.tfm``), the paired slice stacks on the working grid
(``*_slices.npy``) and ``record.json``, written last: its presence marks the case complete.

Example:
    >>> PreparedCase(Path("PREP/p01")).ct_path.name
    'ct_registered.nii.gz'
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from medtrans.errors import DatasetError

MANIFEST = "manifest.json"
RECORD = "record.json"
MR_FILE = "mr.nii.gz"
CT_FILE = "ct_registered.nii.gz"
MASK_FILE = "mask.nii.gz"
TRANSFORM_FILE = "ct_to_mr.tfm"
#: The slice stacks (MR, CT, mask) in this order.
SLICE_FILES = ("mr_slices.npy", "ct_slices.npy", "mask_slices.npy")
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class PreparedCase:
    """One case folder of a prepared dataset."""

    folder: Path

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def mr_path(self) -> Path:
        return self.folder / MR_FILE

    @property
    def ct_path(self) -> Path:
        return self.folder / CT_FILE

    @property
    def mask_path(self) -> Path:
        return self.folder / MASK_FILE

    @property
    def record_path(self) -> Path:
        return self.folder / RECORD

    def slice_paths(self) -> list[Path]:
        return [self.folder / f for f in SLICE_FILES]

    def is_complete(self) -> bool:
        """The record and every slice stack are there (the record is written last)."""
        return self.record_path.is_file() and all(p.is_file() for p in self.slice_paths())

    def read(self, role: str) -> sitk.Image:
        """``mr``, ``ct`` or ``mask`` through :func:`medtrans.io.read_volume` (damaged or NaN files refused)."""
        from medtrans.io import read_volume

        path = {"mr": self.mr_path, "ct": self.ct_path, "mask": self.mask_path}[role]
        return read_volume(path).image

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """CT (float32 HU), mask (bool) and MR image of the case, for validation and baselines."""
        ct = sitk.GetArrayFromImage(self.read("ct")).astype(np.float32)
        mask_image = self.read("mask")  # kept while its view is read
        mask = sitk.GetArrayViewFromImage(mask_image) > 0
        return ct, mask, self.read("mr")

    def slices(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The (Z, H, W) slice stacks (memory-mapped), checked to agree in shape."""
        try:
            mr, ct, mask = (np.load(p, mmap_mode="r") for p in self.slice_paths())
        except (OSError, ValueError) as exc:
            raise DatasetError(f"slice arrays of case {self.name} are missing or corrupt: {exc}",
                               path=self.folder) from None
        if not (mr.shape == ct.shape == mask.shape):
            raise DatasetError(f"case {self.name}: slice arrays disagree in shape {mr.shape}/{ct.shape}/{mask.shape}",
                               path=self.folder)
        return mr, ct, mask


@dataclass
class PreparedDataset:
    """A prepared dataset folder and its manifest (read once)."""

    root: Path
    manifest: dict[str, Any] = field(repr=False)

    @classmethod
    def open(cls, root: str | Path) -> PreparedDataset:
        """Open ``root``, raising a :class:`DatasetError` naming it unless it holds a readable manifest."""
        root = Path(root)
        f = root / MANIFEST
        if not f.is_file():
            raise DatasetError(f"is not a prepared dataset ({MANIFEST} missing; run medtrans prepare)", path=root)
        try:
            manifest = json.loads(f.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DatasetError(f"{MANIFEST} cannot be read: {exc}", path=root) from None
        if not isinstance(manifest, dict) or not isinstance(manifest.get("split"), dict):
            raise DatasetError(f"{MANIFEST} has no split; was it written by medtrans prepare?", path=root)
        return cls(root, manifest)

    @staticmethod
    def is_prepared(root: str | Path) -> bool:
        return (Path(root) / MANIFEST).is_file()

    def split(self, name: str) -> list[str]:
        """The case names of a split (``train``, ``val``, ``test``)."""
        return list(self.manifest["split"].get(name, []))

    def case(self, name: str) -> PreparedCase:
        return PreparedCase(self.root / name)

    def record(self, name: str) -> dict[str, Any]:
        """A case's record as the manifest holds it."""
        records = {r.get("case"): r for r in self.manifest.get("cases", [])}
        if name not in records:
            raise DatasetError(f"case {name} is not in {MANIFEST}", path=self.root)
        return records[name]

    def case_splits(self) -> dict[str, str]:
        """case -> split, for every case in a split."""
        return {case: name for name, cases in self.manifest["split"].items() for case in cases}

    @property
    def config(self) -> dict[str, Any]:
        """The resolved config the dataset was prepared with."""
        return self.manifest.get("config", {})
