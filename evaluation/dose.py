"""Dose: a plan made on the real CT, recomputed unchanged on the sCT, and how far the two doses differ.

This is how studies and SynthRAD2025 judge an sCT for radiotherapy. Per case and modality:

1. CT, sCT and masks are resampled onto one axis-aligned **dose grid** (:data:`DOSE_GRID_MM`, LPS, covering the
   body): the cost is bounded by the body's size in mm, not by the scan's voxel count.
2. A plan is optimized on the **CT** with pyRadPlan (the Python port of matRad, the engine the challenge uses):
   photons, :data:`PHOTON_GANTRY` (5 coplanar beams, pencil beam); protons, :data:`PROTON_GANTRY` (2 opposed fields,
   Hong pencil beam, the "Generic" machine); the target gets the prescription, the rest of the body is spared.
3. The **same** beams, spots and weights are recomputed on the **sCT** (``calc_dose_forward``).
4. Metrics as SynthRAD2025 defines them: the mean |dose difference| over voxels receiving at least 90 % of the
   prescription, in % of it; target D98, D95, D50, D2 and Dmean differences (sCT - CT) in % of the prescription;
   gamma pass rates 2 %/2 mm and 3 %/3 mm (pymedphys, global, normalised to the prescription, 10 % low-dose cut-off,
   a seeded random subset of :data:`GAMMA_SAMPLES` reference voxels).

HU to relative electron density (photons) and to stopping power (protons) are pyRadPlan's default look-up tables
(matRad's); ``--hlut FILE`` replaces them with the user's scanner calibration (two columns: HU, value). Both
engines are in the optional extra ``medtrans[dose]``; without it ``--dose`` gives one line saying what to install.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from medtrans.errors import InputError, MedtransError

#: Dose (and CT) grid spacing in mm, isotropic: the SynthRAD range is 3-5 mm.
DOSE_GRID_MM = 3.0
#: Prescription per fraction (Gy): every metric is relative to it, so its value only scales the doses shown.
PRESCRIPTION_GY = 2.0
PHOTON_GANTRY = (0.0, 72.0, 144.0, 216.0, 288.0)
PROTON_GANTRY = (90.0, 270.0)
MODALITIES = ("photon", "proton")
#: Reference voxels the gamma index is computed on (pymedphys' random subset, seeded): seconds, not minutes.
GAMMA_SAMPLES = 20_000
#: Default target when the case has none: a sphere of this radius (mm) around the body's deepest point.
DEFAULT_TARGET_RADIUS_MM = 20.0
DOSE_LEVELS = (98, 95, 50, 2)
#: The case folder's target files: a mask volume ``target.*``, or with ``--target-roi`` a region of ``rtstruct.dcm``.
TARGET_STEM = "target"
RTSTRUCT_FILE = "rtstruct.dcm"
EXTRA_HINT = "install the optional extra: pip install 'medtrans[dose]' (pyRadPlan and pymedphys)"


@dataclasses.dataclass(frozen=True)
class DoseOptions:
    """What ``evaluate --dose`` computes: the modalities, the dose grid and an optional HU look-up table."""

    modalities: tuple[str, ...]
    grid_mm: float = DOSE_GRID_MM
    hlut_path: Path | None = None
    #: The target as a region of the case's ``rtstruct.dcm`` (by name) instead of ``target.nii.gz``.
    target_roi: str | None = None

    def hlut(self) -> np.ndarray | None:
        return read_hlut(self.hlut_path) if self.hlut_path is not None else None

    def record(self) -> dict[str, Any]:
        return {"modalities": list(self.modalities), "grid_mm": self.grid_mm, "prescription_gy": PRESCRIPTION_GY,
                "photon_gantry_deg": list(PHOTON_GANTRY), "proton_gantry_deg": list(PROTON_GANTRY),
                "hlut": str(self.hlut_path) if self.hlut_path else "pyRadPlan's default (matRad's)",
                "target": f"RTSTRUCT region {self.target_roi!r}" if self.target_roi else
                f"{TARGET_STEM}.nii.gz (or another volume format), else a default sphere",
                "gamma": {"criteria": ["2%/2mm", "3%/3mm"], "global_normalisation": "prescription",
                          "low_dose_cutoff_pct": 10, "sampled_voxels": GAMMA_SAMPLES},
                "engine": _engine_versions()}


def _engine_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in ("pyRadPlan", "pymedphys"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "absent"
    return out


def parse_modalities(text: str | None) -> tuple[str, ...]:
    """``"photon,proton"`` -> ``("photon", "proton")``, checked.

    Example:
        >>> parse_modalities("proton, photon")
        ('proton', 'photon')
    """
    if not text:
        return ()
    names = tuple(t.strip() for t in text.split(",") if t.strip())
    unknown = [n for n in names if n not in MODALITIES]
    if unknown or len(set(names)) != len(names):
        raise MedtransError(f"--dose takes {' and/or '.join(MODALITIES)}, comma-separated (got {text!r})")
    return names


def dose_columns(modalities: Sequence[str]) -> list[str]:
    """The metric columns ``--dose`` adds, per modality."""
    keys = ["dose_mae_pct", *(f"d{level}_diff_pct" for level in DOSE_LEVELS), "dmean_diff_pct", "gamma_22", "gamma_33"]
    return [f"{m}_{k}" for m in modalities for k in keys]


def require_engine() -> None:
    """One line naming what to install when the dose engines are absent (nothing is downloaded at run time)."""
    missing = []
    for module in ("pyRadPlan", "pymedphys"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise MedtransError(f"--dose needs {' and '.join(missing)}: {EXTRA_HINT}")


def read_hlut(path: str | Path) -> np.ndarray:
    """A user's HU look-up table: two numeric columns (HU, relative electron density or stopping power)."""
    try:
        table = np.loadtxt(path, delimiter="," if str(path).endswith(".csv") else None, ndmin=2)
    except (OSError, ValueError) as exc:
        raise InputError(f"is not a table of two numeric columns (HU, value): {exc}", path=Path(path)) from None
    if table.shape[1] != 2 or table.shape[0] < 2 or np.any(np.diff(table[:, 0]) <= 0):
        raise InputError("needs two columns (HU, value) with HU strictly increasing, two rows at least",
                         path=Path(path))
    return table


def dose_grid(body: sitk.Image, spacing_mm: float = DOSE_GRID_MM, margin_mm: float = 10.0) -> sitk.Image:
    """An axis-aligned (identity direction, LPS) grid over the body's bounding box plus a margin."""
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(sitk.Cast(body > 0, sitk.sitkUInt8))
    if not stats.HasLabel(1):
        raise InputError("the body mask is empty: no dose can be computed")
    x0, y0, z0, nx, ny, nz = stats.GetBoundingBox(1)
    corners = [body.TransformIndexToPhysicalPoint((x, y, z)) for x in (x0, x0 + nx - 1)
               for y in (y0, y0 + ny - 1) for z in (z0, z0 + nz - 1)]
    lo = np.min(corners, axis=0) - margin_mm
    hi = np.max(corners, axis=0) + margin_mm
    grid = sitk.Image([int(np.ceil((h - low) / spacing_mm)) + 1 for low, h in zip(lo, hi, strict=True)],
                      sitk.sitkFloat32)
    grid.SetSpacing((spacing_mm,) * 3)
    grid.SetOrigin(tuple(float(v) for v in lo))
    return grid


def default_target(body: sitk.Image, radius_mm: float = DEFAULT_TARGET_RADIUS_MM) -> tuple[sitk.Image, dict]:
    """A sphere around the body's deepest point (radius at most half that depth), and its record."""
    padded = sitk.ConstantPad(sitk.Cast(body > 0, sitk.sitkUInt8), [1, 1, 1], [1, 1, 1], 0)  # the edge is outside
    depth = sitk.SignedMaurerDistanceMap(padded, insideIsPositive=True, squaredDistance=False, useImageSpacing=True)
    arr = sitk.GetArrayViewFromImage(depth)
    k = np.unravel_index(int(np.argmax(arr)), arr.shape)
    centre = padded.TransformIndexToPhysicalPoint(tuple(int(i) for i in k[::-1]))
    radius = float(min(radius_mm, arr[k] / 2))
    if radius <= 0:
        raise InputError("the body mask is too thin for a default target; give target.nii.gz")
    points = sitk.PhysicalPointSource(sitk.sitkVectorFloat64, body.GetSize(), body.GetOrigin(),
                                      body.GetSpacing(), body.GetDirection())
    offsets = sitk.VectorIndexSelectionCast(points, 0) - centre[0], sitk.VectorIndexSelectionCast(points, 1) - \
        centre[1], sitk.VectorIndexSelectionCast(points, 2) - centre[2]
    inside = sitk.Sqrt(sum(o * o for o in offsets)) <= radius
    return inside, {"kind": "default sphere", "centre_mm": [round(c, 2) for c in centre], "radius_mm": radius}


def on_dose_grid(ct: sitk.Image, sct: sitk.Image, body: sitk.Image, target: sitk.Image,
                 grid: sitk.Image) -> dict[str, np.ndarray]:
    """CT and sCT (linear, air outside) and the masks (nearest) on the dose grid, as (z, y, x) arrays."""
    def resample(img: sitk.Image, interp: int, fill: float, pixel: int) -> np.ndarray:
        return sitk.GetArrayFromImage(sitk.Resample(img, grid, sitk.Transform(), interp, fill, pixel))

    out = {"ct": resample(ct, sitk.sitkLinear, -1000.0, sitk.sitkFloat32),
           "sct": resample(sct, sitk.sitkLinear, -1000.0, sitk.sitkFloat32),
           "body": resample(sitk.Cast(body > 0, sitk.sitkUInt8), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8) > 0,
           "target": resample(sitk.Cast(target > 0, sitk.sitkUInt8), sitk.sitkNearestNeighbor, 0,
                              sitk.sitkUInt8) > 0}
    out["target"] &= out["body"]
    if not out["target"].any():
        raise InputError("the target has no voxel inside the body on the dose grid")
    for key in ("ct", "sct"):  # outside the body is air for the beams (couch, container and noise removed)
        out[key][~out["body"]] = -1000.0
    return out


def dvh_levels(dose: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """D98, D95, D50, D2 (dose received by at least that % of the target) and Dmean, in Gy."""
    d = dose[target]
    out = {f"d{level}": float(np.percentile(d, 100 - level)) for level in DOSE_LEVELS}
    out["dmean"] = float(d.mean())
    return out


def gamma_pass_rate(ref: np.ndarray, ev: np.ndarray, spacing_mm: float, *, percent: float, mm: float,
                    prescription: float) -> float:
    """Global gamma pass rate (%) of ``ev`` against ``ref``: normalised to the prescription, 10 % cut-off."""
    import pymedphys

    axes = tuple(np.arange(n) * spacing_mm for n in ref.shape)
    state = np.random.get_state()
    np.random.seed(0)  # pymedphys draws its random subset from NumPy's global generator
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gamma = pymedphys.gamma(axes, ref, axes, ev, percent, mm, lower_percent_dose_cutoff=10,
                                    global_normalisation=prescription, random_subset=GAMMA_SAMPLES,
                                    max_gamma=1.1, quiet=True)
    finally:
        np.random.set_state(state)
    valid = np.isfinite(gamma)
    return float(100.0 * np.mean(gamma[valid] <= 1.0)) if valid.any() else float("nan")


#: The mid planes the report draws, as (name, array axis): axial cuts z, coronal y, sagittal x.
PLANES = (("axial", 0), ("coronal", 1), ("sagittal", 2))


def gamma_plane(ref: np.ndarray, ev: np.ndarray, spacing_mm: float, *, axis: int, index: int, percent: float,
                mm: float, prescription: float) -> np.ndarray:
    """The gamma index of every reference voxel of one plane (searched in the whole evaluated volume), as a 2-D map;
    NaN below the 10 % cut-off. The same definition as :func:`gamma_pass_rate`, without the random subset: a plane
    is a few thousand voxels, so the report's maps cost seconds and are drawn for the cases it shows only."""
    import pymedphys

    axes = tuple(np.arange(n) * spacing_mm for n in ref.shape)
    plane_axes = tuple(np.array([a[index]]) if k == axis else a for k, a in enumerate(axes))
    plane = np.take(ref, [index], axis=axis)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gamma = pymedphys.gamma(plane_axes, plane, axes, ev, percent, mm, lower_percent_dose_cutoff=10,
                                global_normalisation=prescription, max_gamma=2.0, quiet=True)
    return np.squeeze(np.asarray(gamma, np.float32), axis=axis)


def dose_metrics(dose_ct: np.ndarray, dose_sct: np.ndarray, target: np.ndarray, *, spacing_mm: float,
                 prescription: float, prefix: str) -> dict[str, float]:
    """The SynthRAD2025 dose metrics of one modality (see the module docstring), keys prefixed ``photon_``..."""
    high = dose_ct >= 0.9 * prescription
    out = {f"{prefix}_dose_mae_pct": float(100 * np.abs(dose_sct[high] - dose_ct[high]).mean() / prescription)
           if high.any() else float("nan")}
    a, b = dvh_levels(dose_ct, target), dvh_levels(dose_sct, target)
    out.update({f"{prefix}_{k}_diff_pct": 100 * (b[k] - a[k]) / prescription for k in a})
    for percent, mm in ((2, 2), (3, 3)):
        out[f"{prefix}_gamma_{percent}{mm}"] = gamma_pass_rate(dose_ct, dose_sct, spacing_mm, percent=percent,
                                                               mm=mm, prescription=prescription)
    return out


def plan_and_recompute(grids: dict[str, np.ndarray], *, modality: str, spacing_mm: float,
                       prescription: float = PRESCRIPTION_GY, hlut: np.ndarray | None = None
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Optimize a plan on the CT and recompute it unchanged on the sCT; both doses (Gy) on the dose grid."""
    from medtrans.evaluation.dose_engine import optimize_and_forward

    logging.getLogger("pyRadPlan").setLevel(logging.ERROR)  # its "no engine specified, using ..." notices
    return optimize_and_forward(grids, modality=modality, spacing_mm=spacing_mm, prescription=prescription,
                                gantry=PHOTON_GANTRY if modality == "photon" else PROTON_GANTRY, hlut=hlut)


def case_target(case_dir: Path, ct: sitk.Image, *, roi: str | None) -> tuple[sitk.Image | None, dict[str, str]]:
    """The case's target on the CT grid and its record: with ``roi``, that region of ``rtstruct.dcm`` (an error if
    the file or region is missing); else ``target.*`` if there is one; else None (the default sphere follows)."""
    from medtrans.cohort import find_role_file
    from medtrans.io import read_volume
    from medtrans.io.rtstruct import rtstruct_mask

    if roi is not None:
        path = case_dir / RTSTRUCT_FILE
        if not path.is_file():
            raise InputError(f"--target-roi {roi!r} was given but the case has no {RTSTRUCT_FILE}", path=case_dir)
        return rtstruct_mask(path, roi, ct), {"kind": f"RTSTRUCT region {roi!r}"}
    found = find_role_file(case_dir, TARGET_STEM)
    if found is None:
        return None, {}
    target = read_volume(found).image
    target = sitk.Resample(target, ct, sitk.Transform(), sitk.sitkNearestNeighbor, 0, target.GetPixelID())
    return target, {"kind": found.name}


def case_dose(ct: sitk.Image, sct: sitk.Image, body: sitk.Image, target: sitk.Image | None, *,
              modalities: Sequence[str], spacing_mm: float = DOSE_GRID_MM, hlut: np.ndarray | None = None,
              target_record: dict[str, str] | None = None) -> tuple[dict[str, float], dict[str, Any]]:
    """Dose metrics of one case for each modality, and what the report draws (doses, target, the target record)."""
    record = target_record or {"kind": "given mask"}
    grid = dose_grid(body, spacing_mm)
    if target is None:  # found on the dose grid: its cost does not grow with the scan's voxel count
        on_grid = sitk.Resample(sitk.Cast(body > 0, sitk.sitkUInt8), grid, sitk.Transform(),
                                sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
        target, record = default_target(on_grid)
    grids = on_dose_grid(ct, sct, body, target, grid)
    metrics: dict[str, float] = {}
    figure: dict[str, Any] = {"target_record": record, "target": grids["target"], "body": grids["body"],
                              "spacing_mm": spacing_mm, "prescription": PRESCRIPTION_GY, "doses": {}}
    for modality in modalities:
        dose_ct, dose_sct = plan_and_recompute(grids, modality=modality, spacing_mm=spacing_mm, hlut=hlut)
        metrics.update(dose_metrics(dose_ct, dose_sct, grids["target"], spacing_mm=spacing_mm,
                                    prescription=PRESCRIPTION_GY, prefix=modality))
        figure["doses"][modality] = (dose_ct, dose_sct)
    return metrics, figure
