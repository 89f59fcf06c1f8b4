"""Context-free baselines that any trained model must beat."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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
