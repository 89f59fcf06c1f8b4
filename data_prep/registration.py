"""CT-to-MR registration with SimpleITK (Mattes mutual information, multi-resolution).

The transform returned maps MR-grid (fixed) physical points into CT (moving) space, the convention of
``SimpleITK.Resample(ct, mr, transform)``, and is written as an ITK transform file.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import SimpleITK as sitk

from medtrans.config import PrepareConfig
from medtrans.errors import GeometryError
from medtrans.intensity import mr_foreground

BODY_HU = -400.0


@dataclass
class RegistrationResult:
    transform: sitk.Transform
    metric_before: float
    metric_after: float
    stages: list[dict[str, Any]]


def physical_bounds(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned physical bounding box (min, max corners) of an image's voxel centres."""
    size = np.array(image.GetSize()) - 1
    corners = [image.TransformContinuousIndexToPhysicalPoint([float(c) for c in np.array(b) * size])
               for b in np.ndindex(2, 2, 2)]
    arr = np.array(corners)
    return arr.min(axis=0), arr.max(axis=0)


def check_overlap(fixed: sitk.Image, moving: sitk.Image) -> None:
    """Raise a :class:`GeometryError` when the two fields of view do not intersect at all."""
    (a0, a1), (b0, b1) = physical_bounds(fixed), physical_bounds(moving)
    if np.any(a1 < b0) or np.any(b1 < a0):
        raise GeometryError(
            "MR and CT fields of view do not overlap in physical space (MR box "
            f"{np.round(a0, 1).tolist()}..{np.round(a1, 1).tolist()} mm, CT box {np.round(b0, 1).tolist()}.."
            f"{np.round(b1, 1).tolist()} mm); are they in the same frame of reference?"
        )


def _binary_float(image: sitk.Image, mask: np.ndarray) -> sitk.Image:
    out = sitk.GetImageFromArray(mask.astype(np.float32))
    out.CopyInformation(image)
    return out


def _method(cfg: PrepareConfig, fixed_mask: sitk.Image) -> sitk.ImageRegistrationMethod:
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=48)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(cfg.registration_sampling, cfg.registration_seed)
    reg.SetMetricFixedMask(fixed_mask)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetShrinkFactorsPerLevel(cfg.registration_shrink)
    reg.SetSmoothingSigmasPerLevel([max(0.0, s / 2.0) for s in cfg.registration_shrink])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    return reg


@contextmanager
def sitk_threads(threads: int) -> Iterator[None]:
    """Run SimpleITK filters with ``threads`` threads (0: leave the current setting), restoring it after."""
    if threads <= 0:
        yield
        return
    previous = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(previous)


def register_ct_to_mr(mr: sitk.Image, ct: sitk.Image, cfg: PrepareConfig) -> RegistrationResult:
    """Register a CT (moving) to an MR (fixed): rigid, then optional affine and B-spline stages.

    Initialization matches the centres of mass of the two body masks (CT above -400 HU, MR above Otsu),
    which is robust to the large offsets of exports from different sessions.

    With ``cfg.registration_threads == 1`` (the default) the result is bit-identical from run to run and
    machine to machine: SimpleITK's multi-threaded Mattes MI adds per-thread partial sums in scheduling
    order, so with several threads the transform changes slightly between identical runs (measured here:
    about 1e-4 rad). Parallelism then comes from preparing several cases at once (``--workers``).
    """
    with sitk_threads(cfg.registration_threads):
        return _register(mr, ct, cfg)


#: The independent check starts this far from the centre-of-mass start (mm along each axis, degrees about z).
CHECK_SHIFT_MM = (2.0, -2.0, 1.5)
CHECK_ROTATION_DEG = 2.0


@dataclass
class RegistrationCheck:
    """How far an independent registration puts the MR's body points from where the used transform puts them."""

    mean_mm: float
    p95_mm: float
    seconds: float


def registration_disagreement(mr: sitk.Image, ct: sitk.Image, used: sitk.Transform, cfg: PrepareConfig,
                              *, points: int = 2000) -> RegistrationCheck:
    """Register again, independently, and measure the disagreement in millimetres over the body.

    The independent run is rigid, uses another sampling seed and starts away from the centre-of-mass start
    (:data:`CHECK_SHIFT_MM`, :data:`CHECK_ROTATION_DEG`). When the used transform is right, both land on the same
    pose (here 0.05-0.3 mm); when the CT is left misaligned, or the registration stopped in a local optimum, they
    do not, and the disagreement approximates the misalignment (calibrated on pseudo-pairs, docs/trust.md).
    """
    t0 = time.perf_counter()
    check = dataclasses.replace(cfg, registration="rigid", registration_seed=cfg.registration_seed + 101)
    with sitk_threads(cfg.registration_threads):
        independent = _register(mr, ct, check, perturb=True).transform
    fg = np.argwhere(mr_foreground(sitk.GetArrayFromImage(mr).astype(np.float32)))[:, ::-1]  # (x, y, z) indices
    rng = np.random.default_rng(cfg.registration_seed)
    chosen = fg[rng.choice(len(fg), size=min(points, len(fg)), replace=False)]
    d = np.array([np.linalg.norm(np.subtract(used.TransformPoint(p), independent.TransformPoint(p)))
                  for p in (mr.TransformIndexToPhysicalPoint([int(v) for v in i]) for i in chosen)])
    return RegistrationCheck(float(d.mean()), float(np.percentile(d, 95)), time.perf_counter() - t0)


def _register(mr: sitk.Image, ct: sitk.Image, cfg: PrepareConfig, *, perturb: bool = False) -> RegistrationResult:
    check_overlap(mr, ct)
    fixed = sitk.Cast(mr, sitk.sitkFloat32)
    moving = sitk.Cast(ct, sitk.sitkFloat32)
    mr_arr = sitk.GetArrayFromImage(fixed)
    mr_fg = mr_foreground(mr_arr)
    ct_body = sitk.GetArrayFromImage(moving) > BODY_HU
    if not mr_fg.any() or not ct_body.any():
        raise GeometryError("MR or CT has no body voxels to register (blank image?)")
    fixed_mask = sitk.BinaryDilate(sitk.Cast(_binary_float(fixed, mr_fg), sitk.sitkUInt8), [3, 3, 1])
    init = sitk.CenteredTransformInitializer(
        _binary_float(fixed, mr_fg), _binary_float(moving, ct_body), sitk.Euler3DTransform(),
        sitk.CenteredTransformInitializerFilter.MOMENTS,
    )
    rigid = sitk.Euler3DTransform(init)
    if perturb:
        rigid.SetTranslation(tuple(np.add(rigid.GetTranslation(), CHECK_SHIFT_MM)))
        rigid.SetRotation(*np.add((rigid.GetAngleX(), rigid.GetAngleY(), rigid.GetAngleZ()),
                                  (0.0, 0.0, math.radians(CHECK_ROTATION_DEG))))
    identity_metric = _evaluate(cfg, fixed, moving, fixed_mask, sitk.Euler3DTransform())
    stages: list[dict[str, Any]] = []

    if cfg.registration == "none":
        return RegistrationResult(sitk.Euler3DTransform(), identity_metric, identity_metric, stages)

    reg = _method(cfg, fixed_mask)
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=2.0, minStep=1e-4, numberOfIterations=cfg.registration_iterations,
        relaxationFactor=0.8, gradientMagnitudeTolerance=1e-8,
    )
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetInitialTransform(rigid, inPlace=True)
    reg.Execute(fixed, moving)
    stages.append({"stage": "rigid", "metric": reg.GetMetricValue(), "iterations": reg.GetOptimizerIteration(),
                   "stop": reg.GetOptimizerStopConditionDescription()})
    final: sitk.Transform = sitk.Euler3DTransform(rigid)

    if cfg.registration == "affine":
        affine = sitk.AffineTransform(3)
        affine.SetCenter(rigid.GetCenter())
        affine.SetMatrix(rigid.GetMatrix())
        affine.SetTranslation(rigid.GetTranslation())
        reg = _method(cfg, fixed_mask)
        reg.SetOptimizerAsRegularStepGradientDescent(
            learningRate=1.0, minStep=1e-4, numberOfIterations=cfg.registration_iterations, relaxationFactor=0.6)
        reg.SetOptimizerScalesFromPhysicalShift()
        reg.SetInitialTransform(affine, inPlace=True)
        reg.Execute(fixed, moving)
        stages.append({"stage": "affine", "metric": reg.GetMetricValue(), "iterations": reg.GetOptimizerIteration()})
        final = affine
    elif cfg.registration == "rigid+bspline":
        bspline = sitk.BSplineTransformInitializer(fixed, [cfg.bspline_mesh] * 3)
        reg = _method(cfg, fixed_mask)
        reg.SetShrinkFactorsPerLevel([2, 1])
        reg.SetSmoothingSigmasPerLevel([1.0, 0.0])
        reg.SetOptimizerAsLBFGSB(gradientConvergenceTolerance=1e-5, numberOfIterations=50)
        reg.SetMovingInitialTransform(rigid)
        reg.SetInitialTransform(bspline, inPlace=True)
        reg.Execute(fixed, moving)
        stages.append({"stage": "bspline", "metric": reg.GetMetricValue(), "iterations": reg.GetOptimizerIteration()})
        composite = sitk.CompositeTransform(rigid)  # applied last: rigid(bspline(p))
        composite.AddTransform(bspline)
        final = composite

    after = _evaluate(cfg, fixed, moving, fixed_mask, final)
    return RegistrationResult(final, identity_metric, after, stages)


def _evaluate(cfg: PrepareConfig, fixed: sitk.Image, moving: sitk.Image, fixed_mask: sitk.Image,
              transform: sitk.Transform) -> float:
    """Mattes MI (negative: lower is better) at full resolution for a given transform."""
    reg = _method(cfg, fixed_mask)
    reg.SetShrinkFactorsPerLevel([1])
    reg.SetSmoothingSigmasPerLevel([0])
    reg.SetInitialTransform(transform)
    return float(reg.MetricEvaluate(fixed, moving))


def resample_ct(ct: sitk.Image, mr: sitk.Image, transform: sitk.Transform) -> sitk.Image:
    """The CT on the MR grid (linear; -1024 HU outside the CT's field of view)."""
    return sitk.Resample(ct, mr, transform, sitk.sitkLinear, -1024.0, ct.GetPixelID())
