"""2D slices with patient positions -> one volume: sorting along the slice normal, missing-slice checks, and the
resampling of tilted or irregularly spaced stacks onto a rectilinear grid (dcm2niix's tilt correction)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from medtrans.errors import DicomSeriesError

#: A step this close (relative) to a whole multiple of the steps on both its sides is a gap: slices are missing.
GAP_TOLERANCE = 0.05


@dataclass
class SliceLayout:
    """Where a stack's slices lie along the slice normal (sorted), and whether they form a regular grid."""

    order: np.ndarray  #: slice indices sorted along the normal
    along: np.ndarray  #: sorted positions along the normal (mm)
    steps: np.ndarray  #: distances between neighbouring slices (mm)
    tilt_deg: float  #: largest angle between a slice-to-slice step and the normal (a gantry tilt)
    uniform: bool  #: steps equal within 1 %

    @property
    def step(self) -> float:
        return float(np.median(self.steps))

    @property
    def regular(self) -> bool:
        return self.uniform and self.tilt_deg <= 0.5


def missing_slices(steps: np.ndarray) -> tuple[int, float, float] | None:
    """Whole slices missing from a stack: a step that is k >= 2 times the steps on both its sides (one side at the
    ends), as a regular run with one slice deleted has. Returns (slices missing, the gap, the run's step) or None.

    A change of spacing (two runs of 2.5 and 5 mm) is not a gap: the 5 mm steps are 5 mm on one side.

    Example:
        >>> missing_slices(np.array([4.2, 4.2, 8.4, 4.2, 1.1, 7.4, 7.4]))
        (1, 8.4, 4.2)
        >>> missing_slices(np.array([2.5, 2.5, 5.0, 5.0, 5.0])) is None
        True
    """
    missing, where = 0, None
    for i, s in enumerate(steps):
        sides = [steps[j] for j in (i - 1, i + 1) if 0 <= j < len(steps)]
        ratios = [s / n for n in sides]
        if sides and all(r > 1.5 and abs(r - round(r)) <= GAP_TOLERANCE * round(r) for r in ratios):
            missing += round(ratios[0]) - 1
            where = where or (float(s), float(sides[0]))
    return (missing, *where) if missing else None


def slice_layout(positions: np.ndarray, normal: np.ndarray, *, what: str, source: Path) -> SliceLayout:
    """Sort slices along ``normal`` and measure their spacing and tilt.

    Raises:
        DicomSeriesError: duplicate positions, or whole slices missing (:func:`missing_slices`): an incomplete copy
            must be reported, not interpolated over, whether the stack is regular, tilted or irregularly spaced.
    """
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    positions, along = positions[order], along[order]
    if len(along) < 2:
        return SliceLayout(order, along, np.array([1.0]), 0.0, True)
    steps = np.diff(along)
    if np.any(steps < 1e-3):
        raise DicomSeriesError(f"{what} has duplicate slice positions", path=source)
    deltas = np.diff(positions, axis=0)
    cosines = np.abs(deltas @ normal) / np.linalg.norm(deltas, axis=1)
    tilt = math.degrees(math.acos(float(np.clip(cosines.min(), -1, 1))))
    step = float(np.median(steps))
    uniform = bool(np.max(np.abs(steps - step)) <= max(0.01, 0.01 * step))
    gap = None if uniform else missing_slices(steps)
    if gap is not None:
        raise DicomSeriesError(f"{what} is missing {gap[0]} slice(s): positions jump by {gap[1]:.3g} mm where the "
                               f"slices around the jump are {gap[2]:.3g} mm apart (an incomplete copy?)",
                               path=source)
    return SliceLayout(order, along, steps, tilt, uniform)


@dataclass
class FrameStack:
    """2D slices with their patient positions: what a classic series or an enhanced multi-frame file holds.

    Attributes:
        pixels: (K, rows, cols) values after rescale (HU for CT).
        positions: (K, 3) ImagePositionPatient of each slice (LPS, mm).
        orientation: ImageOrientationPatient (row direction, then column direction).
        pixel_spacing: DICOM PixelSpacing: (between rows, between columns) in mm.
    """

    pixels: np.ndarray
    positions: np.ndarray
    orientation: np.ndarray
    pixel_spacing: tuple[float, float]


def stack_to_image(stack: FrameStack, *, source: Path, what: str) -> tuple[sitk.Image, dict[str, Any] | None]:
    """Build a volume from slices; a tilted or irregularly spaced stack is resampled onto a rectilinear grid.

    A regular stack (slice positions along the slice normal, uniform steps) becomes the image with direction
    (row, column, normal) as it is. Otherwise every slice is shifted in its own plane onto the columns of the
    first slice (linear interpolation: this removes a gantry tilt's shear) and the shifted slices are
    interpolated linearly along the normal onto uniform steps: the rectilinear grid that dcm2niix's tilt
    correction produces, keeping the slice plane's own row and column directions. Voxels no slice covers get
    the stack's minimum value.

    Returns:
        The image, and None for a regular stack or a record of what was done.

    Raises:
        DicomSeriesError: duplicate slice positions, or whole slices missing (see :func:`slice_layout`).
    """
    r, c = stack.orientation[:3], stack.orientation[3:]
    n = np.cross(r, c)
    layout = slice_layout(stack.positions, n, what=what, source=source)
    pixels, positions = stack.pixels[layout.order], stack.positions[layout.order]
    row_sp, col_sp = (float(v) for v in stack.pixel_spacing)
    direction = np.stack([r, c, n], axis=1)
    if layout.regular:
        image = sitk.GetImageFromArray(np.ascontiguousarray(pixels))
        image.SetSpacing((col_sp, row_sp, layout.step))
        image.SetOrigin(tuple(float(v) for v in positions[0]))
        image.SetDirection(tuple(float(v) for v in direction.ravel()))
        return image, None
    out, origin_shift, dz = _rectilinear(pixels, positions, layout, r, c, (row_sp, col_sp))
    image = sitk.GetImageFromArray(out)
    image.SetSpacing((col_sp, row_sp, dz))
    image.SetOrigin(tuple(float(v) for v in positions[0] + origin_shift))
    image.SetDirection(tuple(float(v) for v in direction.ravel()))
    steps = layout.steps
    record = {"resampled_to_rectilinear_grid": True, "gantry_tilt_deg": round(layout.tilt_deg, 3),
              "slice_steps_mm": [round(float(steps.min()), 4), round(float(steps.max()), 4)],
              "slices_in": len(layout.order), "slices_out": int(out.shape[0]), "slice_spacing_mm": dz,
              "interpolation": "linear (in-plane shift, then along the slice normal)"}
    return image, record


def _rectilinear(pixels: np.ndarray, positions: np.ndarray, layout: SliceLayout, r: np.ndarray, c: np.ndarray,
                 spacing: tuple[float, float]) -> tuple[np.ndarray, np.ndarray, float]:
    """The slices shifted onto common columns and interpolated onto uniform steps along the normal: the volume,
    the shift of its origin from the first slice's position, and its slice spacing."""
    from scipy.ndimage import affine_transform

    row_sp, col_sp = spacing
    k, steps = len(layout.order), layout.steps
    offsets = positions - positions[0]
    a, b = offsets @ r / col_sp, offsets @ c / row_sp  # each slice's in-plane shift, in columns and rows
    x0, y0 = math.floor(a.min() + 1e-6), math.floor(b.min() + 1e-6)
    width = math.ceil(a.max() - 1e-6) - x0 + pixels.shape[2]
    height = math.ceil(b.max() - 1e-6) - y0 + pixels.shape[1]
    fill = float(pixels.min())
    s = layout.along - layout.along[0]
    regular = steps[steps >= 0.5 * layout.step]  # an odd short step (a re-positioned acquisition) sets no grid
    dz = float(regular.min())
    shifted: dict[int, np.ndarray] = {}

    def on_grid(i: int) -> np.ndarray:
        if i not in shifted:
            shifted[i] = affine_transform(pixels[i].astype(np.float32), np.eye(2), offset=(y0 - b[i], x0 - a[i]),
                                          output_shape=(height, width), order=1, cval=fill)
        return shifted[i]

    out = np.empty((math.floor(s[-1] / dz + 1e-6) + 1, height, width), np.float32)
    for m in range(out.shape[0]):
        z = m * dz
        i = min(int(np.searchsorted(s, z + 1e-6, side="right")) - 1, k - 2)
        w = 0.0 if k == 1 else float(np.clip((z - s[i]) / (s[i + 1] - s[i]), 0.0, 1.0))
        out[m] = on_grid(i) if w < 1e-6 else (1 - w) * on_grid(i) + w * on_grid(i + 1)
    return out, x0 * col_sp * r + y0 * row_sp * c, dz
