"""CT-to-MR registration with SimpleITK at a cost bounded by design: working grids and a sample budget per level.

1. **Working grids** (:class:`Pyramid`): each image is resampled once onto each level's grid, in millimetres
   (``prepare.registration_levels_mm``, default 4 then 2 mm; never finer than the image itself). Rigid alignment
   needs about 2 mm, not the 0.4 mm voxels of a clinical CT, so a 512x512x400 scan costs what a 128x128x100 one does.
   The CT's couch, head-rest, immobilization mask or container is removed on the working grid (:mod:`.masks`).
2. **A start search** (:mod:`.start_search`): 24 axis-aligned orientations and centre-of-mass shifts, scored by
   mutual information at the coarsest level; the best few are refined briefly and the best of those is the start.
3. **Refinement**: rigid (then optional affine or B-spline) Mattes mutual information, level by level, with
   ``prepare.registration_samples`` random samples inside the MR body at every level (a count, not a fraction of the
   voxels), so that its cost does not grow with the scan. A stage stopped by its iteration limit says so.

The transform returned maps MR-grid (fixed) physical points into CT (moving) space, the convention of
``SimpleITK.Resample(ct, mr, transform)``, and is written as an ITK transform file. With ``registration_threads=1``
(the default) the result is bit-identical from run to run and machine to machine: SimpleITK's multi-threaded Mattes
MI adds per-thread partial sums in scheduling order. Parallelism comes from preparing several cases at once, and
from running the independent check beside the rest of a case (SimpleITK releases the GIL).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import SimpleITK as sitk

from medtrans.config import PrepareConfig
from medtrans.data_prep.pyramid import Level, Pyramid, build_pyramid, sitk_threads
from medtrans.data_prep.start_search import (
    Start,
    candidate_starts,
    choose_start,
    is_unturned,
    orientation_name,
)
from medtrans.errors import GeometryError
from medtrans.intensity import AIR_HU

#: Mattes MI histogram bins.
HISTOGRAM_BINS = 48
#: Samples per start in the start search, and iterations of the brief refinement of the best starts.
SEARCH_SAMPLES = 10_000
SEARCH_ITERATIONS = 30
SEARCH_REFINED = 6
#: Other orientations whose search score lies within this share of the best's |MI| are refined through the whole
#: pyramid too (near-symmetric anatomy: the coarse search cannot tell them apart), at most :data:`MAX_TIES` of them.
TIE_MARGIN = 0.05
MAX_TIES = 2
#: The optimizer has converged when its step falls below this (scaled parameter units: about mm); 1e-4 let noisy
#: coarse levels oscillate to the iteration limit without moving (a phantom: 200 iterations, the limit, vs 28).
MIN_STEP = 1e-3


@dataclass
class RegistrationResult:
    transform: sitk.Transform
    metric_before: float
    metric_after: float
    stages: list[dict[str, Any]]
    start: dict[str, Any] | None = None
    seconds: dict[str, float] = field(default_factory=dict)


def _method(level: Level, samples: int, seed: int) -> sitk.ImageRegistrationMethod:
    reg = sitk.ImageRegistrationMethod()
    reg.SetNumberOfThreads(level.threads)
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=HISTOGRAM_BINS)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(level.sampling(samples), seed)
    reg.SetMetricFixedMask(level.fixed_mask)
    reg.SetInterpolator(sitk.sitkLinear)
    # gradients at the samples only: precomputed gradient images cost more than they save (measured: 60 vs 110 ms
    # per iteration at 50k samples, 0.16 vs 0.48 s per metric evaluation)
    reg.SetMetricUseFixedImageGradientFilter(False)
    reg.SetMetricUseMovingImageGradientFilter(False)
    reg.SetShrinkFactorsPerLevel([1])
    reg.SetSmoothingSigmasPerLevel([0.0])
    return reg


def metric_at(level: Level, transform: sitk.Transform, samples: int, seed: int) -> float:
    """Mattes MI (negative: lower is better) of ``transform`` on one level."""
    reg = _method(level, samples, seed)
    reg.SetInitialTransform(transform)
    try:
        return float(reg.MetricEvaluate(level.fixed, level.moving))
    except RuntimeError:  # no sample maps into the CT (another frame of reference): nothing to measure there
        return float("nan")


def optimize(level: Level, transform: sitk.Transform, *, samples: int, seed: int, iterations: int,
             learning_rate: float = 2.0, stage: str = "rigid") -> dict[str, Any]:
    """Refine ``transform`` in place on one level (regular-step gradient descent); returns the stage's record.

    A rigid transform is refined as a small Euler correction on top of it, folded back in afterwards: whatever the
    start's orientation, the optimized angles stay near zero, far from gimbal lock (Euler angles) and from the
    singular 180 degree turns (a versor's parameters).
    """
    reg = _method(level, samples, seed)
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=learning_rate, minStep=MIN_STEP,
                                                 numberOfIterations=iterations, relaxationFactor=0.8,
                                                 gradientMagnitudeTolerance=1e-8)
    rigid = isinstance(transform, sitk.VersorRigid3DTransform)
    correction = sitk.Euler3DTransform(transform.GetCenter(), 0.0, 0.0, 0.0, (0.0, 0.0, 0.0)) if rigid else None
    if rigid:
        reg.SetMovingInitialTransform(transform)  # T(p) = transform(correction(p))
    reg.SetInitialTransform(correction if rigid else transform, inPlace=True)
    reg.SetOptimizerScalesFromPhysicalShift()
    try:
        reg.Execute(level.fixed, level.moving)
    except RuntimeError as exc:
        raise GeometryError(f"registration lost the overlap of MR and CT on the {level.mm:g} mm level "
                            f"({str(exc).strip().splitlines()[-1][:160]})") from None
    if rigid:
        fold_in(transform, correction)
    done = int(reg.GetOptimizerIteration())
    stop = reg.GetOptimizerStopConditionDescription()
    return {"stage": stage, "level_mm": level.mm, "metric": float(reg.GetMetricValue()), "iterations": done,
            "max_iterations": iterations, "hit_iteration_limit": done >= iterations or "Maximum number" in stop,
            "samples": int(reg.GetMetricNumberOfValidPoints()), "stop": stop}


def fold_in(rigid: sitk.VersorRigid3DTransform, correction: sitk.Transform) -> None:
    """Set ``rigid`` to ``rigid(correction(p))`` (both rigid), keeping its centre."""
    a = np.array(rigid.GetMatrix()).reshape(3, 3) @ np.array(correction.GetMatrix()).reshape(3, 3)
    u, _, vt = np.linalg.svd(a)  # re-orthonormalize: the versor refuses a matrix off by rounding
    a = u @ vt
    centre = np.array(rigid.GetCenter())
    image_of_centre = np.array(rigid.TransformPoint(correction.TransformPoint(tuple(centre))))
    rigid.SetMatrix(tuple(float(v) for v in a.ravel()))
    rigid.SetTranslation(tuple(float(v) for v in image_of_centre - centre))


def search_start(pyramid: Pyramid, cfg: PrepareConfig, *, seed: int, dicom_positions: bool) -> list[Start]:
    """The start (:mod:`.start_search`): every candidate scored on the search level, the best refined briefly there.

    Returns the chosen start first, then the starts of other orientations that scored within :data:`TIE_MARGIN` of
    it (near-symmetric anatomy): the refinement decides among those on the finer levels.
    """
    coarse = pyramid.search
    starts = candidate_starts(pyramid.fixed_body, pyramid.moving_body)
    if not cfg.registration_search:
        starts = starts[:1]  # the unturned orientation with the centres of mass aligned
    for s in starts:
        s.metric = metric_at(coarse, s.transform, SEARCH_SAMPLES, seed)
    finite = sorted((s for s in starts if math.isfinite(s.metric)), key=lambda s: s.metric)
    shortlist = finite[:SEARCH_REFINED]
    shortlist += [s for s in finite[SEARCH_REFINED:] if is_unturned(s.rotation)][:2]  # the prior gets its chance
    if not shortlist:
        raise GeometryError("MR and CT do not overlap at any start orientation (are they the same patient?)")
    for s in shortlist:  # on a copy: the brief refinement only ranks the starts (at this level it may drift)
        s.refined = optimize(coarse, sitk.VersorRigid3DTransform(s.transform), samples=SEARCH_SAMPLES, seed=seed,
                             iterations=SEARCH_ITERATIONS)["metric"]
    chosen = choose_start(shortlist, dicom_positions=dicom_positions)
    others = sorted((s for s in shortlist if not np.array_equal(s.rotation, chosen.rotation)), key=lambda s: s.score)
    chosen.extra = {"candidates": len(starts), "refined": len(shortlist),
                    "best_other_orientation": others[0].score if others else None}
    if is_unturned(chosen.rotation):
        return [chosen]  # the prior decides near ties
    ties, seen = [], set()
    for s in others:
        key = tuple(s.rotation.ravel())
        if s.score <= chosen.score + TIE_MARGIN * abs(chosen.score) and key not in seen and len(ties) < MAX_TIES:
            ties.append(s)
            seen.add(key)
    return [chosen, *ties]


def _rigid(pyramid: Pyramid, start: Start, cfg: PrepareConfig, seed: int,
           perturb: Callable[[sitk.VersorRigid3DTransform], None] | None,
           ) -> tuple[sitk.VersorRigid3DTransform, list[dict[str, Any]]]:
    """Rigid refinement from ``start`` through every level of the pyramid."""
    rigid = sitk.VersorRigid3DTransform(start.transform)
    if perturb is not None:
        perturb(rigid)
    records = [optimize(level, rigid, samples=cfg.registration_samples, seed=seed,
                        iterations=cfg.registration_iterations) for level in pyramid.levels]
    return rigid, records


def register_ct_to_mr(mr: sitk.Image, ct: sitk.Image, cfg: PrepareConfig, *, pyramid: Pyramid | None = None,
                      dicom_positions: bool = False) -> RegistrationResult:
    """Register a CT (moving) to an MR (fixed): start search, then rigid and the optional affine or B-spline stage.

    Args:
        mr, ct: the images as read (any grid, any size).
        cfg: the prepare config (levels, samples, iterations, seed, threads).
        pyramid: the working grids when the caller built them already (:func:`build_pyramid`).
        dicom_positions: both series carry DICOM PatientPosition (a stronger prior, see :mod:`.start_search`).
    """
    with sitk_threads(cfg.registration_threads):
        pyramid = pyramid or build_pyramid(mr, ct, cfg)
        return register_pyramid(pyramid, cfg, seed=cfg.registration_seed, dicom_positions=dicom_positions)


def register_pyramid(pyramid: Pyramid, cfg: PrepareConfig, *, seed: int, dicom_positions: bool,
              perturb: Callable[[sitk.VersorRigid3DTransform], None] | None = None,
              stages: str | None = None) -> RegistrationResult:
    stages = stages or cfg.registration
    finest, samples = pyramid.finest, cfg.registration_samples
    before = metric_at(finest, sitk.VersorRigid3DTransform(), samples, seed)
    if stages == "none":
        return RegistrationResult(sitk.VersorRigid3DTransform(), before, before, [])
    t0 = time.perf_counter()
    starts = search_start(pyramid, cfg, seed=seed, dicom_positions=dicom_positions)
    t1 = time.perf_counter()
    refined = [(s, *_rigid(pyramid, s, cfg, seed, perturb)) for s in starts]
    start, rigid, records = min(refined, key=lambda r: r[2][-1]["metric"])  # near ties: the finest level decides
    start_record = {**starts[0].describe(), **starts[0].extra, **start.describe()}
    if len(starts) > 1:
        start_record["near_ties"] = [{"orientation": orientation_name(s.rotation), "final_metric": r[-1]["metric"]}
                                     for s, _, r in refined]
    final: sitk.Transform = sitk.VersorRigid3DTransform(rigid)
    if stages == "affine":
        final, more = _affine(pyramid, rigid, cfg, seed)
        records.append(more)
    elif stages == "rigid+bspline":
        final, more = _bspline(pyramid, rigid, cfg, seed)
        records.append(more)
    after = metric_at(finest, final, samples, seed)
    seconds = {"working_grids": pyramid.seconds, "start_search": t1 - t0, "refine": time.perf_counter() - t1}
    return RegistrationResult(final, before, after, records, start_record, seconds)


def _affine(pyramid: Pyramid, rigid: sitk.VersorRigid3DTransform, cfg: PrepareConfig,
            seed: int) -> tuple[sitk.Transform, dict[str, Any]]:
    affine = sitk.AffineTransform(3)
    affine.SetCenter(rigid.GetCenter())
    affine.SetMatrix(rigid.GetMatrix())
    affine.SetTranslation(rigid.GetTranslation())
    record = optimize(pyramid.finest, affine, samples=cfg.registration_samples, seed=seed,
                      iterations=cfg.registration_iterations, learning_rate=1.0, stage="affine")
    return affine, record


def _bspline(pyramid: Pyramid, rigid: sitk.VersorRigid3DTransform, cfg: PrepareConfig,
             seed: int) -> tuple[sitk.Transform, dict[str, Any]]:
    level = pyramid.finest
    bspline = sitk.BSplineTransformInitializer(level.fixed, [cfg.bspline_mesh] * 3)
    reg = _method(level, cfg.registration_samples, seed)
    reg.SetOptimizerAsLBFGSB(gradientConvergenceTolerance=1e-5, numberOfIterations=50)
    reg.SetMovingInitialTransform(rigid)
    reg.SetInitialTransform(bspline, inPlace=True)
    reg.Execute(level.fixed, level.moving)
    done = int(reg.GetOptimizerIteration())
    record = {"stage": "bspline", "level_mm": level.mm, "metric": float(reg.GetMetricValue()), "iterations": done,
              "max_iterations": 50, "hit_iteration_limit": done >= 50,
              "samples": int(reg.GetMetricNumberOfValidPoints()), "stop": reg.GetOptimizerStopConditionDescription()}
    composite = sitk.CompositeTransform(rigid)  # applied last: rigid(bspline(p))
    composite.AddTransform(bspline)
    return composite, record


def resample_ct(ct: sitk.Image, mr: sitk.Image, transform: sitk.Transform) -> sitk.Image:
    """The CT on the MR grid (linear; air outside the CT's field of view)."""
    return sitk.Resample(ct, mr, transform, sitk.sitkLinear, AIR_HU, ct.GetPixelID())
