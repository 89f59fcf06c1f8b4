"""Calibration of the predicted error: a map of expected |sCT - CT| (HU) rescaled so that it means what it says.

A network's own error estimate is fitted on its training cases, where it errs less than on new ones; so on held-out
cases (the validation split, or a fold's own cases in cross-validation) the measured mean |error| is tabulated
against the predicted one, per tissue band of the sCT (air and lung, soft tissue, bone: the bands err differently),
in quantile bins of the prediction, made monotone (pool adjacent violators), and the map is mapped through that
curve. The curve is stored in the model bundle (``bundle.json`` -> ``error_calibration``) and applied by convert.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> predicted = rng.uniform(5, 50, 20000)
    >>> error = 2 * predicted * rng.exponential(1.0, predicted.size)  # the prediction is half the error
    >>> sct = np.zeros(predicted.size)
    >>> table = fit_calibration(predicted, error, sct)
    >>> round(float(calibration_error(apply_calibration(predicted, sct, table), error)[0]), 2) < 0.1
    True
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: Tissue bands of the sCT (HU, lower bound included), each with its own curve.
BANDS: tuple[tuple[str, float, float], ...] = (("air", -np.inf, -200.0), ("soft", -200.0, 300.0),
                                                ("bone", 300.0, np.inf))
#: Quantile bins of the predicted error per curve (deciles), and the fewest voxels a band needs for its own curve.
BINS = 10
MIN_BAND_SAMPLES = 2000


def _monotone(y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Pool adjacent violators: the non-decreasing sequence closest to ``y`` in weighted least squares."""
    blocks = [[float(v), float(c), 1] for v, c in zip(y, w, strict=True)]
    merged: list[list[float]] = []
    for b in blocks:
        merged.append(b)
        while len(merged) > 1 and merged[-2][0] > merged[-1][0]:
            (v1, w1, n1), (v2, w2, n2) = merged[-2], merged[-1]
            merged[-2:] = [[(v1 * w1 + v2 * w2) / (w1 + w2), w1 + w2, n1 + n2]]
    return np.repeat([m[0] for m in merged], [int(m[2]) for m in merged])


def _curve(predicted: np.ndarray, error: np.ndarray) -> dict[str, list[float]]:
    edges = np.unique(np.quantile(predicted, np.linspace(0, 1, BINS + 1)))
    which = np.clip(np.searchsorted(edges, predicted, side="right") - 1, 0, len(edges) - 2)
    counts = np.bincount(which, minlength=len(edges) - 1).astype(np.float64)
    keep = counts > 0
    x = (np.bincount(which, predicted, len(edges) - 1)[keep] / counts[keep])
    y = (np.bincount(which, error, len(edges) - 1)[keep] / counts[keep])
    return {"predicted_hu": [float(v) for v in x], "measured_hu": [float(v) for v in _monotone(y, counts[keep])]}


def fit_calibration(predicted: np.ndarray, error: np.ndarray, sct_hu: np.ndarray) -> dict[str, Any]:
    """The calibration table from held-out voxels: predicted error, measured |error| and the sCT's HU (1-D arrays).

    Returns:
        ``{"bands": {name: curve or None}, "all": curve, "n": voxels}``; a band with fewer than
        :data:`MIN_BAND_SAMPLES` voxels uses the curve of all voxels.
    """
    predicted, error, sct_hu = (np.asarray(a, np.float64).ravel() for a in (predicted, error, sct_hu))
    bands = {}
    for name, lo, hi in BANDS:
        inside = (sct_hu >= lo) & (sct_hu < hi)
        bands[name] = _curve(predicted[inside], error[inside]) if inside.sum() >= MIN_BAND_SAMPLES else None
    return {"bands": bands, "all": _curve(predicted, error), "n": int(predicted.size), "bins": BINS}


def _through(curve: dict[str, list[float]], predicted: np.ndarray) -> np.ndarray:
    """Along the curve between its first and last knots; beyond them, the end knot's ratio measured/predicted."""
    x, y = np.asarray(curve["predicted_hu"]), np.asarray(curve["measured_hu"])
    out = np.interp(predicted, x, y)
    low, high = predicted < x[0], predicted > x[-1]
    out[low] = predicted[low] * (y[0] / max(x[0], 1e-6))
    out[high] = predicted[high] * (y[-1] / max(x[-1], 1e-6))
    return out


def apply_calibration(predicted: np.ndarray, sct_hu: np.ndarray, table: dict[str, Any] | None) -> np.ndarray:
    """The predicted error (any shape) through the table's curve of each voxel's band (float32); unchanged without
    a table."""
    predicted = np.asarray(predicted, np.float32)
    if not table:
        return predicted
    out = np.empty(predicted.shape, np.float32)
    for name, lo, hi in BANDS:
        inside = (sct_hu >= lo) & (sct_hu < hi)
        curve = table["bands"].get(name) or table["all"]
        out[inside] = _through(curve, predicted[inside].astype(np.float64))
    return out


def calibration_error(predicted: np.ndarray, error: np.ndarray, *, bins: int = BINS
                      ) -> tuple[float, list[tuple[float, float]]]:
    """Mean over quantile bins of the predicted error of |mean predicted - mean measured| / mean measured, and the
    (predicted, measured) mean of each bin: 0 is a perfectly calibrated map."""
    predicted, error = np.asarray(predicted, np.float64).ravel(), np.asarray(error, np.float64).ravel()
    edges = np.unique(np.quantile(predicted, np.linspace(0, 1, bins + 1)))
    which = np.clip(np.searchsorted(edges, predicted, side="right") - 1, 0, len(edges) - 2)
    rows = [(float(predicted[which == b].mean()), float(error[which == b].mean()))
            for b in range(len(edges) - 1) if np.any(which == b)]
    return float(np.mean([abs(p - m) / max(m, 1e-6) for p, m in rows])), rows
