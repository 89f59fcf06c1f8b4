"""Context-free baselines that any trained model must beat."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from medtrans.intensity import MRNormalization, normalize_mr
from medtrans.prepared import PreparedCase


@dataclass
class IntensityLookup:
    """The best single normalized-MR-intensity -> HU lookup (per-bin median HU, which minimizes MAE)."""

    edges: np.ndarray
    hu: np.ndarray

    @classmethod
    def fit(cls, mr_norm: list[np.ndarray], ct_hu: list[np.ndarray], masks: list[np.ndarray], *, bins: int = 128
            ) -> IntensityLookup:
        x = np.concatenate([m[k > 0] for m, k in zip(mr_norm, masks, strict=True)])
        y = np.concatenate([c[k > 0] for c, k in zip(ct_hu, masks, strict=True)])
        edges = np.quantile(x, np.linspace(0, 1, bins + 1))
        edges = np.unique(edges)
        idx = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, len(edges) - 2)
        hu = np.array([np.median(y[idx == i]) if np.any(idx == i) else np.median(y) for i in range(len(edges) - 1)])
        return cls(edges, hu.astype(np.float32))

    def predict(self, mr_norm: np.ndarray) -> np.ndarray:
        idx = np.clip(np.searchsorted(self.edges, mr_norm, side="right") - 1, 0, len(self.hu) - 1)
        return self.hu[idx]


def constant_hu(ct_hu: list[np.ndarray], masks: list[np.ndarray]) -> float:
    """The single HU value with the lowest MAE inside the training masks (their median)."""
    return float(np.median(np.concatenate([c[k > 0] for c, k in zip(ct_hu, masks, strict=True)])))


def prepared_arrays(prep: str | Path, case: str, spec: MRNormalization) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(normalized MR, CT in HU, mask) of one prepared case, as the network's training pairs see them."""
    ct, mask, mr = PreparedCase(Path(prep) / case).arrays()
    return sitk.GetArrayFromImage(normalize_mr(mr, spec)[0]), ct, mask.astype(np.uint8)


def fit_baselines(prep: str | Path, cases: Iterable[str], spec: MRNormalization) -> tuple[IntensityLookup, float]:
    """Fit the MR-intensity lookup and the constant HU on prepared training cases.

    Args:
        prep: a prepared dataset folder.
        cases: the training cases (never the cases scored).
        spec: the MR normalization of the dataset.
    """
    data = [prepared_arrays(prep, c, spec) for c in cases]
    mr, ct, mask = ([d[i] for d in data] for i in range(3))
    return IntensityLookup.fit(mr, ct, mask), constant_hu(ct, mask)


def lookup_sct(lookup: IntensityLookup, mr: sitk.Image, spec: MRNormalization) -> sitk.Image:
    """The lookup's synthetic CT (HU, float32) for an MR as read, on the MR's grid."""
    out = sitk.GetImageFromArray(lookup.predict(sitk.GetArrayFromImage(normalize_mr(mr, spec)[0])))
    out.CopyInformation(mr)
    return out
