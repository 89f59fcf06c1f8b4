"""Intensity normalization: the one home of the CT and MR mappings shared by training and inference.

CT: HU clipped to [-1024, 3000] and scaled linearly to [-1, 1] (the SynthRAD2023 PSNR range).
MR: optional N4 bias correction, then either ``percentile`` scaling (0 -> -1 and the high percentile of
the MR foreground -> 1; MR has a physical zero, and keeping it preserves the air/tissue distinction
that a low percentile would erase) or ``zscore`` inside the foreground. The foreground is Otsu's
threshold of the MR itself, so inference needs nothing but the MR.

Example:
    >>> import numpy as np
    >>> hu = np.array([-1024.0, 120.0, 3000.0])
    >>> np.round(denormalize_ct(normalize_ct(hu)), 2).tolist()  # exact up to float32 rounding
    [-1024.0, 120.0, 3000.0]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import SimpleITK as sitk

#: The HU range the CT is normalized over (the SynthRAD2023 PSNR range); its low end is air.
CT_RANGE = (-1024.0, 3000.0)
AIR_HU = CT_RANGE[0]
#: HU per unit of the normalized CT scale (what the error output's Laplace scale is measured in, too).
CT_HU_PER_UNIT = (CT_RANGE[1] - CT_RANGE[0]) / 2.0
#: Normalized value of air / background in CT space.
CT_BACKGROUND = -1.0
#: Normalized value of zero MR signal under percentile normalization (z-score's is -mean/std, recorded per case).
MR_PERCENTILE_BACKGROUND = -1.0


def normalize_ct(hu: np.ndarray) -> np.ndarray:
    """HU -> [-1, 1] (values outside :data:`CT_RANGE` are clipped)."""
    lo, hi = CT_RANGE
    return (np.clip(hu, lo, hi).astype(np.float32) - lo) * np.float32(2.0 / (hi - lo)) - np.float32(1.0)


def denormalize_ct(x: np.ndarray) -> np.ndarray:
    """[-1, 1] -> HU, the inverse of :func:`normalize_ct` inside the range."""
    return (np.asarray(x, np.float32) + np.float32(1.0)) * np.float32(CT_HU_PER_UNIT) + np.float32(CT_RANGE[0])


@dataclass(frozen=True)
class MRNormalization:
    """Parameters of the MR mapping (recorded in the manifest and the model bundle)."""

    method: str = "percentile"
    percentile: float = 99.5
    n4: bool = False

    @classmethod
    def from_prepare(cls, prepare: Any) -> MRNormalization:
        """The mapping a :class:`medtrans.config.PrepareConfig` asks for (prepare, training and the bundle share it)."""
        return cls(method=prepare.mr_norm, percentile=prepare.mr_percentile, n4=prepare.n4)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MRNormalization:
        return cls(method=d["method"], percentile=float(d["percentile"]), n4=bool(d["n4"]))

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "percentile": self.percentile, "n4": self.n4}


#: Intensity statistics (Otsu's threshold, the high percentile, mean and spread) are taken from at most this many
#: voxels, a fixed stride through the volume: their cost is bounded however large the scan (a 512x512x300 MR is
#: sampled every 19th voxel); volumes up to this size use every voxel.
MAX_STATISTICS_VOXELS = 1 << 22


def statistics_sample(arr: np.ndarray) -> np.ndarray:
    """A deterministic, evenly strided sample of at most :data:`MAX_STATISTICS_VOXELS` values of ``arr``.

    Example:
        >>> statistics_sample(np.arange(10)).size
        10
    """
    flat = arr.reshape(-1)
    stride = -(-flat.size // MAX_STATISTICS_VOXELS)
    return flat[::stride]


def foreground_threshold(arr: np.ndarray) -> float | None:
    """Otsu's threshold of the non-zero voxels of an MR array (from :func:`statistics_sample`); None when there is
    too little signal to threshold (then everything above 0 is foreground)."""
    from skimage.filters import threshold_otsu

    sample = statistics_sample(arr)
    nz = sample[sample > 0]
    if nz.size < 16 or float(nz.min()) == float(nz.max()):
        return None
    return float(threshold_otsu(nz))


def mr_foreground(arr: np.ndarray) -> np.ndarray:
    """Boolean foreground of an MR array: above Otsu's threshold of the non-zero voxels."""
    t = foreground_threshold(arr)
    return arr > (0 if t is None else t)


def n4_correct(image: sitk.Image) -> sitk.Image:
    """N4 bias-field correction at a shrink factor of 4 (the field is applied at full resolution)."""
    img = sitk.Cast(image, sitk.sitkFloat32)
    mask = sitk.OtsuThreshold(img, 0, 1, 200)
    shrink = 4
    small = sitk.Shrink(img, [shrink] * 3)
    small_mask = sitk.Shrink(mask, [shrink] * 3)
    corrector = sitk.N4BiasFieldCorrectionImageFilter()
    corrector.SetMaximumNumberOfIterations([20, 20, 10])
    corrector.Execute(small, small_mask)
    log_field = corrector.GetLogBiasFieldAsImage(img)
    return img / sitk.Exp(log_field)


def normalize_mr(image: sitk.Image, spec: MRNormalization) -> tuple[sitk.Image, dict[str, float]]:
    """Map an MR image to the network's input range.

    Args:
        image: the MR as read (any pixel type, any grid).
        spec: the mapping to apply.

    Returns:
        A float32 image on the same grid, and the per-volume statistics used (for the record), including
        ``background``: the normalized value of zero signal, used to pad slices.
    """
    normalized, stats, _ = normalize_mr_with_foreground(image, spec)
    return normalized, stats


def normalize_mr_with_foreground(image: sitk.Image,
                                 spec: MRNormalization) -> tuple[sitk.Image, dict[str, float], np.ndarray]:
    """:func:`normalize_mr`, also returning the foreground it used (:func:`mr_foreground` of the non-negative,
    N4-corrected if ``spec.n4``, MR; array order): callers that need it too need not compute it again.

    The statistics come from :func:`statistics_sample`; the mapping is applied in place on one float32 copy.
    """
    source = n4_correct(image) if spec.n4 else image
    arr = np.array(sitk.GetArrayViewFromImage(source), dtype=np.float32)  # the one copy
    np.maximum(arr, 0.0, out=arr)  # magnitude MR is non-negative; negatives are reconstruction artefacts
    t = foreground_threshold(arr)
    fg = arr > (0 if t is None else t)
    sample = statistics_sample(arr)
    values = sample[sample > (0 if t is None else t)]
    values = values if values.size else sample
    if spec.method == "percentile":
        hi = float(np.percentile(values, spec.percentile))
        scale = hi if hi > 0 else 1.0
        arr *= np.float32(2.0 / scale)
        arr -= np.float32(1.0)
        stats = {"high": hi, "background": MR_PERCENTILE_BACKGROUND}
    elif spec.method == "zscore":
        mean, std = float(values.mean()), float(values.std()) or 1.0
        arr -= np.float32(mean)
        arr /= np.float32(std)
        stats = {"mean": mean, "std": std, "background": -mean / std}
    else:
        raise ValueError(f"unknown MR normalization {spec.method!r}")
    np.minimum(arr, np.float32(5.0), out=arr)  # bound outliers (metal, vessels); np.clip is several times slower
    np.maximum(arr, np.float32(-5.0), out=arr)
    result = sitk.GetImageFromArray(arr)
    result.CopyInformation(image)
    return result, stats, fg
