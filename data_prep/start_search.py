"""Where rigid registration starts: a search over the 24 axis-aligned orientations and centre-of-mass shifts.

CT and MR come from different sessions: the patient may lie head-first on one and feet-first on the other, prone on
one and supine on the other, or a phantom may be turned end for end in its container. Gradient descent from one start
cannot undo a 180 degree turn, so every proper rotation that maps the axes onto the axes (the 24 rotations of a cube)
is tried about the bodies' centres of mass, together with shifts that align the bodies' ends where their extents
differ (a CT that covers the shoulders, an MR that does not). Each start's mutual information is measured at the
coarsest level; the best are refined briefly there, and the best of those is the start.

Scans are stored in patient coordinates (DICOM's, and the NIfTI/MHA headers converted from them), so the unturned
orientation is the prior: it wins unless a turned one scores clearly better (:data:`PRIOR_MARGIN`; twice that where
both series carry DICOM PatientPosition, which asserts the patient frame). A near tie on nearly symmetric anatomy thus
never turns the patient, while a wrong position entry or a turned phantom is still found.

Example:
    >>> len(ORIENTATIONS), orientation_name(ORIENTATIONS[0])
    (24, 'unturned')
    >>> {orientation_name(r) for r in ORIENTATIONS} >= {"180 deg about y", "90 deg about z"}
    True
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import SimpleITK as sitk


def _rotations() -> list[np.ndarray]:
    mats = []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1.0, -1.0), repeat=3):
            m = np.zeros((3, 3))
            for row, (col, sign) in enumerate(zip(perm, signs, strict=True)):
                m[row, col] = sign
            if np.linalg.det(m) > 0:
                mats.append(m)
    mats.sort(key=lambda m: -np.trace(m))  # the identity first, then the 180/90/120 degree turns
    return mats


#: The 24 proper rotations that map the coordinate axes onto the axes (identity first).
ORIENTATIONS: list[np.ndarray] = _rotations()
#: A turned start must beat the unturned one by this share of the best |MI| (doubled with DICOM PatientPosition).
PRIOR_MARGIN = 0.1
#: Ends of the two bodies are aligned as extra starts along an axis where their extents differ by more than this (mm).
END_ALIGN_MM = 20.0


def orientation_name(rotation: np.ndarray) -> str:
    """``'unturned'`` or ``'<angle> deg about <axis>'`` (axes in the MR's physical LPS frame)."""
    angle = math.degrees(math.acos(float(np.clip((np.trace(rotation) - 1) / 2, -1, 1))))
    if angle < 1:
        return "unturned"
    w, v = np.linalg.eig(rotation)
    axis = np.real(v[:, int(np.argmin(np.abs(w - 1)))])
    axis = axis / np.abs(axis).max()
    axis = axis if axis[np.flatnonzero(np.abs(axis) > 1e-6)[0]] > 0 else -axis
    names = "xyz"
    nonzero = [i for i in range(3) if abs(axis[i]) > 1e-6]
    label = names[nonzero[0]] if len(nonzero) == 1 else "(" + ",".join(f"{axis[i]:+.0f}{names[i]}" for i in nonzero) + ")"
    return f"{angle:.0f} deg about {label}"


@dataclass
class Body:
    """A body's centre of mass and a sample of its points (physical LPS, mm)."""

    centre: np.ndarray
    points: np.ndarray

    @classmethod
    def of(cls, mask: sitk.Image, *, points: int = 4000, seed: int = 0) -> Body:
        idx = np.argwhere(sitk.GetArrayViewFromImage(mask) > 0)[:, ::-1].astype(np.float64)  # (x, y, z) indices
        if len(idx) == 0:
            raise ValueError("empty body mask")
        chosen = idx[np.random.default_rng(seed).choice(len(idx), size=min(points, len(idx)), replace=False)]
        d = np.array(mask.GetDirection()).reshape(3, 3) * np.array(mask.GetSpacing())[None, :]
        phys = chosen @ d.T + np.array(mask.GetOrigin())
        centre = idx.mean(axis=0) @ d.T + np.array(mask.GetOrigin())
        return cls(centre, phys)


@dataclass
class Start:
    """A candidate start: an orientation and a shift, its transform and the metric measured for it."""

    rotation: np.ndarray
    shift_mm: np.ndarray  #: in the MR's frame, beyond the centre-of-mass alignment
    transform: sitk.VersorRigid3DTransform
    metric: float = float("nan")
    refined: float | None = None
    alignment: str = "centres of mass"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def score(self) -> float:
        return self.refined if self.refined is not None else self.metric

    def describe(self) -> dict[str, Any]:
        return {"orientation": orientation_name(self.rotation), "rotation": self.rotation.astype(int).tolist(),
                "alignment": self.alignment, "shift_mm": np.round(self.shift_mm, 2).tolist(),
                "metric": self.metric, "refined_metric": self.refined}


def start_transform(rotation: np.ndarray, fixed: Body, moving: Body,
                    shift: np.ndarray) -> sitk.VersorRigid3DTransform:
    """The rigid map p -> c_m + R (p - c_f - shift) (MR point to CT point) about c_f. A versor represents every
    orientation exactly (Euler angles lose some of the 90 degree turns to gimbal lock)."""
    t = sitk.VersorRigid3DTransform()
    t.SetCenter(tuple(float(v) for v in fixed.centre))
    t.SetMatrix(tuple(float(v) for v in rotation.ravel()))
    t.SetTranslation(tuple(float(v) for v in moving.centre - fixed.centre - rotation @ shift))
    return t


def candidate_starts(fixed: Body, moving: Body) -> list[Start]:
    """Every orientation with its centres of mass aligned, plus end alignments where the extents differ."""
    u = fixed.points - fixed.centre
    starts = []
    for rotation in ORIENTATIONS:
        v = (moving.points - moving.centre) @ rotation  # moving body offsets, expressed in the MR's frame
        shifts = [("centres of mass", np.zeros(3))]
        for axis in range(3):
            if abs(np.ptp(u[:, axis]) - np.ptp(v[:, axis])) > END_ALIGN_MM:
                for end, fn in (("low", np.min), ("high", np.max)):
                    s = np.zeros(3)
                    s[axis] = fn(u[:, axis]) - fn(v[:, axis])
                    shifts.append((f"{end} ends along {'xyz'[axis]}", s))
        starts += [Start(rotation, s, start_transform(rotation, fixed, moving, s), alignment=label)
                   for label, s in shifts]
    return starts


def choose_start(starts: list[Start], *, dicom_positions: bool = False) -> Start:
    """The best start (lowest metric: Mattes MI is negative), unless an unturned one is within the prior's margin."""
    best = min(starts, key=lambda s: s.score)
    margin = PRIOR_MARGIN * (2.0 if dicom_positions else 1.0)
    unturned = [s for s in starts if is_unturned(s.rotation) and math.isfinite(s.score)]
    if unturned:
        home = min(unturned, key=lambda s: s.score)
        if home.score <= best.score + margin * abs(best.score):
            return home
    return best


def is_unturned(rotation: np.ndarray) -> bool:
    return bool(np.trace(rotation) > 2.5)
