"""The registration QA: an independent registration on the same working grids, and how far it disagrees in mm.

When the used transform is right, both land on the same pose (here 0.03-0.3 mm); when the CT was left misaligned,
or the registration stopped in a local optimum or chose another orientation, they do not, and the disagreement
approximates the misalignment (calibrated on pseudo-pairs, docs/trust.md).
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
from medtrans.data_prep.registration import register_pyramid

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


