"""Quality flags: one small type for every warning medtrans raises about a case, and the checks that make them.

A :class:`Flag` has a name, a severity and a reason. Registration QA (``prepare``) and the input checks of
``convert`` both report flags; records (``record.json``, ``sct.json``), tables and the evaluation report show them
the same way. The input checks compare an MR with a profile of the MRs the model was trained on, stored in the
model bundle (``bundle.json`` → ``training_profile``); docs/trust.md says what each flag means.

Example:
    >>> f = Flag("intensity_out_of_distribution", "warning", "unlike training")
    >>> flags_text([f])
    'WARNING intensity_out_of_distribution: unlike training'
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import SimpleITK as sitk

from medtrans.geometry import canonical_spacing, orientation_code
from medtrans.intensity import MRNormalization, mr_foreground, normalize_mr, statistics_sample

SEVERITIES = ("info", "warning", "error")
#: Normalized MR intensities are binned over this range for the intensity profile (percentile normalization
#: maps zero signal to -1 and the foreground's high percentile to 1).
HIST_RANGE = (-1.0, 3.0)
HIST_BINS = 40


@dataclass(frozen=True)
class Flag:
    """One finding about a case: ``severity`` is info, warning or error (an error fails the case)."""

    name: str
    severity: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, str]) -> Flag:
        return cls(d["name"], d["severity"], d["reason"])


def flags_text(flags: list[Flag]) -> str:
    """The flags on one line, most severe first (for tables and reports)."""
    order = sorted(flags, key=lambda f: -SEVERITIES.index(f.severity))
    return "; ".join(f"{f.severity.upper()} {f.name}: {f.reason}" for f in order)


# ------------------------------------------------------------------------------------------------ MR profiles


def mr_profile(mr: sitk.Image, spec: MRNormalization, *, normalized: sitk.Image | None = None,
               foreground: np.ndarray | None = None) -> dict[str, Any]:
    """What the input checks compare: the normalized intensity histogram of the MR foreground, spacing, body
    extent (mm along the canonical axes), orientation and the foreground's share of the field of view.

    ``normalized`` is ``normalize_mr(mr, spec)[0]`` and ``foreground`` is ``mr_foreground`` of the non-negative
    raw MR (array order) when the caller already has them. The histogram and the variation come from
    :func:`medtrans.intensity.statistics_sample` (bounded cost); nothing is reoriented (no copy of the volume).
    """
    norm = normalized if normalized is not None else normalize_mr(mr, spec)[0]
    raw = sitk.GetArrayViewFromImage(mr)
    fg = foreground if foreground is not None else mr_foreground(np.maximum(raw, 0).astype(np.float32, copy=False))
    in_fg = statistics_sample(fg)
    values_norm = statistics_sample(sitk.GetArrayViewFromImage(norm))[in_fg]
    hist, _ = np.histogram(np.clip(values_norm, *HIST_RANGE), bins=HIST_BINS, range=HIST_RANGE)
    spacing = canonical_spacing(mr)
    any_fg = bool(in_fg.any())
    extent = [0.0, 0.0, 0.0]  # per canonical axis x, y, z; projections of the mask, far cheaper than np.nonzero
    if any_fg:
        d = np.abs(np.array(mr.GetDirection())).reshape(3, 3)
        for image_axis, sp in enumerate(mr.GetSpacing()):
            array_axis = 2 - image_axis
            idx = np.flatnonzero(fg.any(axis=tuple(a for a in range(3) if a != array_axis)))
            extent[int(np.argmax(d[:, image_axis]))] = float((int(idx[-1]) - int(idx[0]) + 1) * sp)
    signed = statistics_sample(raw)
    raw_sample = np.maximum(signed, 0).astype(np.float32)
    values = raw_sample[in_fg] if any_fg else raw_sample
    return {"histogram": (hist / max(1, hist.sum())).tolist(), "spacing": spacing, "extent_mm": extent,
            "orientation": orientation_code(mr), "foreground_fraction": float(in_fg.mean()),
            "variation": float(values.std() / (abs(values.mean()) + 1e-6)),
            "below_minus_200": float(np.mean(signed < -200))}


def js_distance(p: list[float] | np.ndarray, q: list[float] | np.ndarray) -> float:
    """Jensen-Shannon distance (base 2, in [0, 1]) between two histograms."""
    from scipy.spatial.distance import jensenshannon

    return float(jensenshannon(np.asarray(p, float) + 1e-12, np.asarray(q, float) + 1e-12, base=2))


def training_profile(profiles: list[dict[str, Any]]) -> dict[str, Any]:
    """Summarize the training MRs' profiles into the reference the input checks use (stored in the bundle)."""
    hist = np.mean([p["histogram"] for p in profiles], axis=0)
    return {
        "n": len(profiles),
        "histogram": hist.tolist(),
        "histogram_distances": [js_distance(p["histogram"], hist) for p in profiles],
        "spacing_min": np.min([p["spacing"] for p in profiles], axis=0).tolist(),
        "spacing_max": np.max([p["spacing"] for p in profiles], axis=0).tolist(),
        "extent_min": np.min([p["extent_mm"] for p in profiles], axis=0).tolist(),
        "extent_max": np.max([p["extent_mm"] for p in profiles], axis=0).tolist(),
        "orientations": sorted({p["orientation"] for p in profiles}),
    }


#: A CT in HU has air: at least this share of its voxels below -500 HU (the outside of the body, sinuses, lungs).
CT_MIN_AIR_FRACTION = 0.005
#: An MR has (almost) no strongly negative values; an "MR" with this share below -200 is a CT in HU.
MR_MAX_NEGATIVE_FRACTION = 0.05


def looks_like_ct(below_minus_200: float) -> Flag | None:
    """The flag for an "MR" whose values are a CT's in HU (magnitude MR is never strongly negative), or None."""
    if below_minus_200 <= MR_MAX_NEGATIVE_FRACTION:
        return None
    return Flag("mr_looks_like_ct", "error", f"{100 * below_minus_200:.1f} % of the MR is below -200: it looks like "
                                             "a CT in HU, not an MR (swapped files?)")


#: How far outside the training range an input may lie before it is flagged (see docs/trust.md).
HISTOGRAM_MARGIN = 0.1  # Jensen-Shannon distance above the largest training case's
SPACING_FACTOR = 1.5  # spacing more than this factor outside the training range
EXTENT_FACTOR = 1.5  # body extent more than this factor outside the training range
NEAR_CONSTANT = 1e-3  # coefficient of variation of the foreground below this: no usable signal


def input_flags(profile: dict[str, Any], reference: dict[str, Any] | None, *,
                cut_note: str = "slices are cut axially either way") -> list[Flag]:
    """Flags for an MR about to be converted, against the training profile (None: only the blank check).

    ``cut_note`` says how the model's mode cuts its inputs whatever their acquisition orientation (the mode's
    :attr:`medtrans.modes.Mode.cut_note`), for the ``orientation_unseen`` flag.
    """
    flags: list[Flag] = []
    if profile["variation"] < NEAR_CONSTANT or profile["foreground_fraction"] == 0.0:
        flags.append(Flag("near_constant", "error", "the MR is (nearly) constant: no anatomy to convert"))
        return flags
    ct_like = looks_like_ct(profile.get("below_minus_200", 0.0))
    if ct_like is not None:  # no histogram can tell it from an unusual MR: its own check, an error
        return [ct_like]
    if reference is None:
        return flags
    limit = max(reference["histogram_distances"]) + HISTOGRAM_MARGIN
    d = js_distance(profile["histogram"], reference["histogram"])
    if d > limit:
        flags.append(Flag("intensity_out_of_distribution", "warning",
                          f"normalized MR intensities unlike the training MRs (Jensen-Shannon distance {d:.2f}; "
                          f"training cases <= {limit - HISTOGRAM_MARGIN:.2f}): another sequence, scanner or region?"))
    axes = "xyz"
    for name, key_lo, key_hi, factor, what in (
            ("spacing_out_of_range", "spacing_min", "spacing_max", SPACING_FACTOR, "spacing"),
            ("field_of_view_out_of_range", "extent_min", "extent_max", EXTENT_FACTOR, "body extent")):
        value = profile["spacing" if what == "spacing" else "extent_mm"]
        for axis, (v, lo, hi) in enumerate(zip(value, reference[key_lo], reference[key_hi], strict=True)):
            if v < lo / factor or v > hi * factor:
                flags.append(Flag(name, "warning", f"{what} along {axes[axis]} is {v:.3g} mm; training MRs had "
                                                   f"{lo:.3g}-{hi:.3g} mm"))
                break
    if profile["orientation"] not in reference["orientations"]:
        flags.append(Flag("orientation_unseen", "info",
                          f"acquired in {profile['orientation']} orientation; training MRs were "
                          f"{', '.join(reference['orientations'])} ({cut_note})"))
    return flags
