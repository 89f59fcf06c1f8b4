"""The registration QA: an independent registration on the same working grids, and how far it disagrees in mm; and
the pairing check: whether MR and CT show the same patient at all.

When the used transform is right, both registrations land on the same pose (here 0.03-0.3 mm); when the CT was left
misaligned, or the registration stopped in a local optimum or chose another orientation, they do not, and the
disagreement approximates the misalignment (calibrated on pseudo-pairs, docs/trust.md). Another patient's CT
registers just as consistently (the two registrations agree on the best, poor, fit); what gives it away is how little
its alignment matters: :func:`pairing_gain`.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import SimpleITK as sitk

from medtrans.config import PrepareConfig
from medtrans.data_prep.pyramid import Pyramid, sitk_threads
from medtrans.data_prep.registration import metric_at, register_pyramid

#: The independent check starts this far from its own start (mm along each axis, degrees about z).
CHECK_SHIFT_MM = (2.0, -2.0, 1.5)
CHECK_ROTATION_DEG = 2.0
#: The check's sampling seed is the registration's plus this; it uses this share of the registration's samples (it
#: must tell millimetres apart, not tenths: measured on pseudo-pairs, half the samples change its reading < 0.1 mm).
CHECK_SEED_OFFSET = 101
CHECK_SAMPLE_SHARE = 0.5


def _perturb(rigid: sitk.VersorRigid3DTransform) -> None:
    turn = math.radians(CHECK_ROTATION_DEG)
    about_z = np.array([[math.cos(turn), -math.sin(turn), 0.0], [math.sin(turn), math.cos(turn), 0.0], [0, 0, 1.0]])
    rigid.SetMatrix(tuple((about_z @ np.array(rigid.GetMatrix()).reshape(3, 3)).ravel()))
    rigid.SetTranslation(tuple(np.add(rigid.GetTranslation(), CHECK_SHIFT_MM)))


@dataclass
class RegistrationCheck:
    """How far an independent registration puts the MR's body points from where the used transform puts them."""

    mean_mm: float
    p95_mm: float
    seconds: float
    start: dict[str, Any] | None = None


def registration_disagreement(pyramid: Pyramid, used: sitk.Transform, cfg: PrepareConfig, *,
                              dicom_positions: bool = False) -> RegistrationCheck:
    """Register again, independently, on the same working grids, and measure the disagreement in millimetres.

    The independent run is rigid, uses another sampling seed, searches its own start and starts away from it
    (:data:`CHECK_SHIFT_MM`, :data:`CHECK_ROTATION_DEG`). When the used transform is right, both land on the same
    pose (here 0.05-0.3 mm); when the CT is left misaligned, or the registration stopped in a local optimum or chose
    another orientation, they do not, and the disagreement approximates the misalignment (calibrated on
    pseudo-pairs, docs/trust.md). Its cost is that of the registration: bounded by the working grids and samples.
    """
    t0 = time.perf_counter()
    check_cfg = dataclasses.replace(cfg, registration_samples=int(cfg.registration_samples * CHECK_SAMPLE_SHARE))
    with sitk_threads(cfg.registration_threads):
        independent = register_pyramid(pyramid, check_cfg, seed=cfg.registration_seed + CHECK_SEED_OFFSET,
                                       dicom_positions=dicom_positions, perturb=_perturb, stages="rigid")
    points = pyramid.fixed_body.points
    d = np.array([np.linalg.norm(np.subtract(used.TransformPoint(p), independent.transform.TransformPoint(p)))
                  for p in points.tolist()])
    return RegistrationCheck(float(d.mean()), float(np.percentile(d, 95)), time.perf_counter() - t0,
                             independent.start)




#: Shifts (mm) of the pairing check's reference poses, along each axis both ways.
PAIRING_SHIFT_MM = 10.0
PAIRING_SAMPLES = 50_000


def pairing_gain(pyramid: Pyramid, used: sitk.Transform, cfg: PrepareConfig) -> float:
    """Mutual information at the registered pose divided by its mean at the six poses shifted by
    :data:`PAIRING_SHIFT_MM` (the finest working grid, the same samples).

    The same patient's images fit sharply: shifting the CT by a centimetre costs most of the information they share
    (pseudo-pairs of four real CTs, registered: 2.67-2.93, ``benchmarks/pairing.py``). Another patient's CT never
    fits: the best pose is hardly better than a shifted one (1.00-1.33). The ratio is the pair's own, whatever the MR's contrast.
    """
    with sitk_threads(cfg.registration_threads):
        at_pose = metric_at(pyramid.finest, used, PAIRING_SAMPLES, cfg.registration_seed)
        shifted = []
        for axis in range(3):
            for sign in (-1.0, 1.0):
                offset = [0.0, 0.0, 0.0]
                offset[axis] = sign * PAIRING_SHIFT_MM
                moved = sitk.CompositeTransform([used, sitk.TranslationTransform(3, offset)])
                shifted.append(metric_at(pyramid.finest, moved, PAIRING_SAMPLES, cfg.registration_seed))
    reference = float(np.nanmean(shifted)) if np.isfinite(shifted).any() else float("nan")
    return at_pose / reference if reference < 0 else float("inf")
