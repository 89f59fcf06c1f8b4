"""Geometry: the one module that knows about grids, orientations and physical space.

Images travel through medtrans as SimpleITK images, whose physical space is LPS (DICOM's patient
coordinates). Networks see arrays cut in one canonical orientation; every output is put back on the
input's own grid. Reorientation here is a pure permutation/flip of voxels (no interpolation), so it is
lossless and exactly invertible, also for oblique volumes (which keep their obliquity in the direction
matrix).

Example:
    >>> import SimpleITK as sitk
    >>> img = sitk.Image([4, 3, 2], sitk.sitkFloat32)
    >>> img.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))  # RAS-like export
    >>> canon = to_canonical(img)
    >>> orientation_code(canon)
    'LPS'
    >>> same_grid(from_canonical(canon, reference=img), img)
    True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import SimpleITK as sitk

from medtrans.errors import GeometryError

#: The orientation every network sees: array axis x toward patient Left, y toward Posterior, z toward
#: Superior (SimpleITK/DICOM "LPS"). Axial slices are planes of constant z.
CANONICAL_ORIENTATION = "LPS"


def geometry_of(image: sitk.Image) -> dict[str, Any]:
    """Return the grid of an image as plain JSON-friendly lists.

    Args:
        image: any SimpleITK image.

    Returns:
        ``{"size", "spacing", "origin", "direction"}`` as SimpleITK reports them (x, y, z order).
    """
    return {
        "size": [int(s) for s in image.GetSize()],
        "spacing": [float(s) for s in image.GetSpacing()],
        "origin": [float(s) for s in image.GetOrigin()],
        "direction": [float(s) for s in image.GetDirection()],
    }


def same_grid(a: sitk.Image, b: sitk.Image, *, tolerance: float = 1e-5) -> bool:
    """True when two images share size, and spacing/origin/direction within ``tolerance``."""
    if a.GetSize() != b.GetSize():
        return False
    return all(
        np.allclose(getattr(a, f)(), getattr(b, f)(), rtol=0, atol=tolerance)
        for f in ("GetSpacing", "GetOrigin", "GetDirection")
    )


def require_same_grid(a: sitk.Image, b: sitk.Image, *, what_a: str, what_b: str) -> None:
    """Raise a :class:`GeometryError` that names both grids unless ``a`` and ``b`` share one."""
    if not same_grid(a, b):
        raise GeometryError(
            f"{what_a} and {what_b} are on different grids: {what_a} {describe_grid(a)}; "
            f"{what_b} {describe_grid(b)}"
        )


def describe_grid(image: sitk.Image) -> str:
    """A short human-readable summary of a grid, for error messages."""
    g = geometry_of(image)
    fmt = lambda v: "[" + ", ".join(f"{x:.4g}" for x in v) + "]"  # noqa: E731
    return (
        f"size {g['size']}, spacing {fmt(g['spacing'])}, origin {fmt(g['origin'])}, "
        f"direction {fmt(g['direction'])}"
    )


def orientation_code(image: sitk.Image) -> str:
    """The closest three-letter orientation code (e.g. ``'LPS'``, ``'RAS'``) of an image's axes."""
    return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(image.GetDirection())


def to_canonical(image: sitk.Image) -> sitk.Image:
    """Permute/flip the voxel axes so that the image is in :data:`CANONICAL_ORIENTATION`.

    The physical position of every voxel is unchanged; only the array layout changes.
    """
    if orientation_code(image) == CANONICAL_ORIENTATION:
        return image
    return sitk.DICOMOrient(image, CANONICAL_ORIENTATION)


def from_canonical(canonical: sitk.Image, *, reference: sitk.Image) -> sitk.Image:
    """Undo :func:`to_canonical`: put ``canonical`` back on ``reference``'s exact grid.

    The voxels are permuted back (no interpolation) and the reference's spacing, origin and direction
    are copied bit for bit, so the output grid equals the input grid exactly.
    """
    code = orientation_code(reference)
    back = canonical if code == CANONICAL_ORIENTATION else sitk.DICOMOrient(canonical, code)
    if back.GetSize() != reference.GetSize() or not same_grid(back, reference, tolerance=1e-3):
        raise GeometryError(
            "internal: the canonical image does not map back onto the reference grid: "
            f"{describe_grid(back)} vs {describe_grid(reference)}"
        )
    back.CopyInformation(reference)
    return back


def on_grid_of(image: sitk.Image, reference: sitk.Image, *, tolerance: float = 1e-4) -> sitk.Image:
    """``image`` on ``reference``'s grid when both hold the same physical voxels in another axis order.

    A lossless permute/flip (no interpolation): for example an sCT written as DICOM from a left-handed MR grid
    comes back with its slice order reversed. Any other image is returned unchanged.

    Example:
        >>> ref = sitk.Image([4, 3, 2], sitk.sitkInt16)
        >>> ref.SetDirection((1, 0, 0, 0, 1, 0, 0, 0, -1))  # left-handed
        >>> stacked = sitk.DICOMOrient(ref, "LPS")  # what a DICOM reader rebuilds
        >>> same_grid(stacked, ref), same_grid(on_grid_of(stacked, ref), ref)
        (False, True)
    """
    if same_grid(image, reference, tolerance=tolerance) or image.GetDimension() != reference.GetDimension():
        return image
    back = sitk.DICOMOrient(image, orientation_code(reference))
    if not same_grid(back, reference, tolerance=tolerance):
        return image
    back.CopyInformation(reference)
    return back


def array_from_canonical(array: np.ndarray, *, reference: sitk.Image) -> sitk.Image:
    """Wrap a (z, y, x) array cut in canonical orientation and return it on ``reference``'s grid."""
    canonical_ref = to_canonical(reference)
    img = sitk.GetImageFromArray(array)
    img.CopyInformation(canonical_ref)
    return from_canonical(img, reference=reference)


def lps_affine(image: sitk.Image) -> np.ndarray:
    """The 4x4 voxel-to-LPS affine of an image (voxel index (i, j, k) in x, y, z order)."""
    d = np.array(image.GetDirection()).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = d * np.array(image.GetSpacing())[None, :]
    affine[:3, 3] = image.GetOrigin()
    return affine


def ras_affine(image: sitk.Image) -> np.ndarray:
    """The 4x4 voxel-to-RAS affine (NIfTI/nibabel convention) of a SimpleITK image.

    NIfTI stores RAS while SimpleITK (like DICOM) works in LPS: the two differ by negating x and y.
    This is the only place in medtrans that converts between them.
    """
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps_affine(image)


def canonical_spacing(image: sitk.Image) -> list[float]:
    """The image's voxel spacing along the canonical axes (x: left-right, y: posterior-anterior, z: superior).

    Example:
        >>> img = sitk.Image([4, 5, 6], sitk.sitkUInt8)
        >>> img.SetSpacing((3.0, 0.5, 0.7))
        >>> img.SetDirection((0, 0, 1, 1, 0, 0, 0, 1, 0))  # sagittal stack: x runs posterior, y superior, z left
        >>> canonical_spacing(img)
        [0.7, 3.0, 0.5]
    """
    d = np.abs(np.array(image.GetDirection()).reshape(3, 3))
    spacing = [0.0, 0.0, 0.0]
    for axis, sp in enumerate(image.GetSpacing()):
        spacing[int(np.argmax(d[:, axis]))] = float(sp)
    return spacing


def working_grid(image: sitk.Image, spacing: Sequence[float | None]) -> sitk.Image | None:
    """The grid a model works on: ``image``'s field of view and directions at a target canonical spacing.

    Args:
        image: the native image.
        spacing: target spacing along canonical x, y and optionally z (mm); None or a missing entry keeps the
            native spacing along that axis.

    Returns:
        An empty image carrying the grid (the field of view's outer edges are kept, so the voxel count is
        rounded), or None when the image already has that spacing.

    Example:
        >>> img = sitk.Image([100, 80, 10], sitk.sitkUInt8)
        >>> img.SetSpacing((0.5, 0.5, 3.0))
        >>> grid = working_grid(img, [1.0, 1.0])
        >>> grid.GetSize(), grid.GetSpacing()
        ((50, 40, 10), (1.0, 1.0, 3.0))
        >>> working_grid(grid, [1.0, 1.0]) is None
        True
    """
    d = np.array(image.GetDirection()).reshape(3, 3)
    old = np.array(image.GetSpacing(), float)
    new = old.copy()
    for axis in range(3):
        canonical = int(np.argmax(np.abs(d[:, axis])))
        if canonical < len(spacing) and spacing[canonical] is not None:
            new[axis] = float(spacing[canonical])
    if np.allclose(new, old, rtol=1e-6, atol=0):
        return None
    return _field_of_view_grid(image, new)


def _field_of_view_grid(image: sitk.Image, spacing: np.ndarray) -> sitk.Image:
    """A grid over ``image``'s field of view (the same corner and axes) at ``spacing``."""
    d = np.array(image.GetDirection()).reshape(3, 3)
    old = np.array(image.GetSpacing(), float)
    size = [max(1, round(n * o / w)) for n, o, w in zip(image.GetSize(), old, spacing, strict=True)]
    edge = np.array(image.GetOrigin()) - d @ (old / 2)  # the field of view's corner
    grid = sitk.Image(size, sitk.sitkUInt8)
    grid.SetSpacing(tuple(float(v) for v in spacing))
    grid.SetDirection(image.GetDirection())
    grid.SetOrigin(tuple(float(v) for v in edge + d @ (spacing / 2)))
    return grid


def resample_onto(image: sitk.Image, grid: sitk.Image, *, nearest: bool = False, default: float = 0.0) -> sitk.Image:
    """``image`` resampled onto ``grid`` (same physical space; linear, or nearest neighbour for labels and masks)."""
    interpolator = sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear
    return sitk.Resample(image, grid, sitk.Transform(), interpolator, float(default), image.GetPixelID())


def level_grid(image: sitk.Image, mm: float) -> sitk.Image:
    """The grid of a registration level: ``image``'s field of view and axes at ``mm`` spacing, never finer than the
    image itself along any axis (a 3.75 mm CT stays at 3.75 mm on a 2 mm level).

    Example:
        >>> img = sitk.Image([512, 512, 300], sitk.sitkUInt8)
        >>> img.SetSpacing((0.5, 0.5, 2.5))
        >>> g = level_grid(img, 2.0)
        >>> g.GetSize(), g.GetSpacing()
        ((128, 128, 300), (2.0, 2.0, 2.5))
    """
    return _field_of_view_grid(image, np.maximum(np.array(image.GetSpacing(), float), float(mm)))


def downsample_onto(image: sitk.Image, grid: sitk.Image, *, default: float = 0.0) -> sitk.Image:
    """``image`` (float32) on a coarser ``grid`` of the same axes: block averages first (anti-aliasing at a cost that
    grows with the voxel count only once), then linear interpolation onto the exact grid.

    Example:
        >>> img = sitk.Image([64, 64, 8], sitk.sitkFloat32) + 1.0
        >>> small = downsample_onto(img, level_grid(img, 4.0))
        >>> small.GetSize(), float(sitk.GetArrayViewFromImage(small).mean())
        ((16, 16, 2), 1.0)
    """
    if same_grid(image, grid):
        return sitk.Cast(image, sitk.sitkFloat32)
    factors = [max(1, math.floor(g / s + 1e-6)) for g, s in zip(grid.GetSpacing(), image.GetSpacing(),
                                                                      strict=True)]
    small = sitk.Cast(image, sitk.sitkFloat32)
    if any(f > 1 for f in factors):
        small = sitk.BinShrink(small, factors)
    return sitk.Resample(small, grid, sitk.Transform(), sitk.sitkLinear, float(default), sitk.sitkFloat32)
