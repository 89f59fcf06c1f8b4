"""One case of ``medtrans prepare``: read, register CT to MR, resample, body mask, normalize (the shared functions of
:mod:`medtrans.intensity`), cut slices on the working grid, and write ``PREP/<case>/`` (:mod:`medtrans.prepared`).

Every step's cost is bounded at clinical size: registration works on its own grids and sample counts
(:mod:`.registration`); what runs on the MR's own grid is a fixed number of passes over it.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from medtrans.cohort import Case
from medtrans.config import Config
from medtrans.data_prep.checks import modality_flags
from medtrans.data_prep.masks import BODY_HU, body_mask, dice
from medtrans.data_prep.pyramid import Pyramid, build_pyramid, require_registrable, sitk_threads
from medtrans.data_prep.registration import RegistrationResult, register_ct_to_mr, resample_ct
from medtrans.data_prep.registration_check import RegistrationCheck, pairing_gain, registration_disagreement
from medtrans.data_prep.slices import SliceStack, extract_slices
from medtrans.errors import InputError
from medtrans.fsutil import atomic_path
from medtrans.geometry import geometry_of, resample_onto, same_grid, working_grid
from medtrans.intensity import CT_BACKGROUND, CT_RANGE, MRNormalization, mr_foreground, normalize_ct, normalize_mr
from medtrans.io import Volume, read_volume, require_signal, write_volume
from medtrans.prepared import SLICE_FILES, TRANSFORM_FILE, PreparedCase


@dataclass
class Registered:
    """What registration gives a case: the result, its independent check (running beside the rest of the case until
    :meth:`checked` is called) and the working grids."""

    result: RegistrationResult
    pending: Future | None
    pyramid: Pyramid
    patient_position: dict[str, str | None]

    def checked(self) -> RegistrationCheck | None:
        return None if self.pending is None else self.pending.result()


def read_pair(case: Case, cfg: Config) -> tuple[Volume, Volume]:
    """The case's MR and CT, refused when missing, blank or too small for the registration pyramid."""
    if case.errors:
        raise InputError("; ".join(case.errors), path=case.folder)
    if case.ct is None:
        raise InputError("has an MR but no CT; a training pair needs both", path=case.folder)
    mr = read_volume(case.mr.path, series_uid=case.mr.series_uid, modality="MR")
    ct = read_volume(case.ct.path, series_uid=case.ct.series_uid, modality="CT")
    for vol, role in ((mr, "MR"), (ct, "CT")):
        require_signal(vol, role)
        require_registrable(vol.image, cfg.prepare.registration_levels_mm, role=role, source=vol.source)
    return mr, ct


def register(mr: Volume, ct: Volume, cfg: Config, pool: ThreadPoolExecutor) -> Registered:
    """Register the CT to the MR and, unless switched off, start its independent check on the same working grids in
    ``pool`` (it runs beside the rest of the case: SimpleITK releases the GIL).

    Where both series carry DICOM PatientPosition, the start search's prior for the unturned orientation is stronger
    (:mod:`.start_search`).
    """
    positions = {role: (vol.dicom_link or {}).get("PatientPosition") or None for role, vol in (("mr", mr), ("ct", ct))}
    dicom = all(positions.values())
    pyramid = build_pyramid(mr.image, ct.image, cfg.prepare)
    result = register_ct_to_mr(mr.image, ct.image, cfg.prepare, pyramid=pyramid, dicom_positions=dicom)
    pending = (pool.submit(registration_disagreement, pyramid, result.transform, cfg.prepare, dicom_positions=dicom)
               if cfg.prepare.qa_registration_check else None)
    return Registered(result, pending, pyramid, positions)


def couch_free_region(reg: Registered, mr: sitk.Image) -> sitk.Image:
    """Where the body can be on the MR grid: the MR body and the couch-free CT body of registration's working grid
    (mapped through the transform), widened by a few millimetres. Keeps a couch or head-rest inside the MR's field of
    view out of the body mask."""
    fine = reg.pyramid.finest
    ct_body = sitk.Resample(reg.pyramid.moving_body_mask, fine.fixed, reg.result.transform, sitk.sitkNearestNeighbor)
    region = sitk.BinaryDilate(sitk.Or(ct_body, reg.pyramid.fixed_body_mask),
                               [max(1, round(4.0 / s)) for s in fine.fixed.GetSpacing()], sitk.sitkBall)
    return sitk.Resample(region, mr, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)


def case_mask(case: Case, mr: sitk.Image, ct_reg: sitk.Image, reg: Registered) -> tuple[sitk.Image, str]:
    """The case's body mask: the one given in the case folder (on the MR grid), else computed."""
    if case.mask is not None:
        m = read_volume(case.mask.path, series_uid=case.mask.series_uid).image
        if not same_grid(m, mr, tolerance=1e-3):
            raise InputError("the mask is not on the MR's grid (it must share size, spacing, origin and direction "
                             "with the MR; remove it to have the body mask computed)", path=case.mask.path)
        mask = sitk.Cast(m > 0, sitk.sitkUInt8)
        mask.CopyInformation(mr)
        if not sitk.GetArrayViewFromImage(mask).any():
            raise InputError("the mask is empty (no voxel above 0)", path=case.mask.path)
        return mask, "provided"
    mask = body_mask(mr, ct_reg, within=couch_free_region(reg, mr))
    if not sitk.GetArrayViewFromImage(mask).any():
        raise InputError("the body mask came out empty; is the MR blank?", path=case.mr.path)
    return mask, "computed"


def cut_slices(mr: sitk.Image, ct_reg: sitk.Image, mask: sitk.Image, cfg: Config,
               ) -> tuple[SliceStack, np.ndarray, sitk.Image | None, MRNormalization, dict[str, float]]:
    """Normalize MR and CT and cut the slice stacks on the cohort's working grid; which slices to keep."""
    spec = MRNormalization.from_prepare(cfg.prepare)
    mr_norm, mr_stats = normalize_mr(mr, spec)
    ct_norm = sitk.GetImageFromArray(normalize_ct(sitk.GetArrayViewFromImage(ct_reg)))
    ct_norm.CopyInformation(mr)
    # slices are cut on the working grid (the cohort's one spacing); the volumes stay on the MR's native grid
    grid = working_grid(mr, cfg.prepare.spacing)
    if grid is not None:
        mr_norm = resample_onto(mr_norm, grid, default=mr_stats["background"])
        ct_norm = resample_onto(ct_norm, grid, default=CT_BACKGROUND)
        mask = resample_onto(mask, grid, nearest=True)
    stack = extract_slices(mr_norm, ct_norm, mask, size=tuple(cfg.prepare.slice_size),
                           mr_background=mr_stats["background"])
    # relative to the case's largest body section, so that resolution and field of view do not matter
    largest = float(stack.body_fraction.max())
    if largest == 0.0:
        raise InputError("no slice contains any body (empty mask inside the slice window)")
    keep = np.where(stack.body_fraction >= cfg.prepare.min_body_fraction * largest)[0]
    return stack, keep, grid, spec, mr_stats


def write_case(folder: Path, mr: sitk.Image, ct_reg: sitk.Image, mask: sitk.Image, transform: sitk.Transform,
               stack: SliceStack) -> None:
    """Write a case's files (each atomically); the record comes last, from the caller."""
    case = PreparedCase(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_volume(mr, case.mr_path)
    write_volume(ct_reg, case.ct_path)
    write_volume(mask, case.mask_path)
    with atomic_path(folder / TRANSFORM_FILE) as tmp:
        sitk.WriteTransform(transform, str(tmp))
    for path, arr in zip(case.slice_paths(), (stack.mr, stack.ct, stack.mask), strict=True):
        with atomic_path(path) as tmp:
            np.save(tmp, arr)


def prepare_case(case: Case, out_dir: Path, cfg: Config) -> dict[str, Any]:
    """Prepare one case into ``out_dir`` and return its record (raises on any problem)."""
    clock = {"t": time.perf_counter()}
    timings: dict[str, float] = {}

    def lap(name: str) -> None:
        now = time.perf_counter()
        timings[name] = now - clock["t"]
        clock["t"] = now

    t0 = clock["t"]
    mr_vol, ct_vol = read_pair(case, cfg)
    lap("read")
    # one SimpleITK thread per task when registration must be reproducible: the check runs on the other core
    with sitk_threads(cfg.prepare.registration_threads), \
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="medtrans-qa") as pool:
        reg = register(mr_vol, ct_vol, cfg, pool)
        mr = mr_vol.image
        ct_reg = resample_ct(ct_vol.image, mr, reg.result.transform)
        lap("register")
        mask, mask_source = case_mask(case, mr, ct_reg, reg)
        stack, keep, grid, spec, mr_stats = cut_slices(mr, ct_reg, mask, cfg)
        lap("mask_normalize_slice")
        write_case(out_dir, mr, ct_reg, mask, reg.result.transform, stack)
        lap("write")
        check = reg.checked()
        lap("wait_for_check")
    timings["total"] = time.perf_counter() - t0
    if check is not None:
        timings["registration_check"] = check.seconds
    return case_record(case, mr_vol, ct_vol, reg, check, ct_reg, mask_source, stack, keep, grid, spec, mr_stats,
                       timings, cfg)


def case_record(case: Case, mr_vol: Volume, ct_vol: Volume, reg: Registered, check: RegistrationCheck | None,
                ct_reg: sitk.Image, mask_source: str, stack: SliceStack, keep: np.ndarray, grid: sitk.Image | None,
                spec: MRNormalization, mr_stats: dict[str, float], timings: dict[str, float],
                cfg: Config) -> dict[str, Any]:
    """The case's ``record.json`` (the manifest gathers them)."""
    mr, result = mr_vol.image, reg.result
    overlap = dice(sitk.GetArrayViewFromImage(ct_reg) > BODY_HU,
                   mr_foreground(np.maximum(sitk.GetArrayViewFromImage(mr), 0).astype(np.float32, copy=False)))
    composite = result.transform.GetName() == "CompositeTransform"
    return {
        "case": case.name,
        "status": "ok",
        "inputs": {role: getattr(case, role).describe() for role in ("mr", "ct", "mask") if getattr(case, role)},
        "input_reconstruction": {role: vol.reconstruction for vol, role in ((mr_vol, "mr"), (ct_vol, "ct"))
                                 if vol.reconstruction},
        "mr_geometry": geometry_of(mr),
        "ct_geometry": geometry_of(ct_vol.image),
        "normalization": {"mr": {**spec.to_dict(), **mr_stats}, "ct": {"range": list(CT_RANGE)}},
        "transform": {"file": TRANSFORM_FILE, "type": result.transform.GetName(),
                      "parameters": None if composite else list(result.transform.GetParameters())},
        "qa": {"metric_before": result.metric_before, "metric_after": result.metric_after, "stages": result.stages,
               "start": result.start, "patient_position": reg.patient_position,
               "registration_seconds": result.seconds,
               "registration_disagreement_mm": None if check is None else {"mean": check.mean_mm, "p95": check.p95_mm,
                                                                            "start": (check.start or {}).get(
                                                                                "orientation")},
               "body_dice_ct_vs_mr": overlap, "mask_source": mask_source,
               "pairing_mi_gain": pairing_gain(reg.pyramid, result.transform, cfg.prepare)
               if cfg.prepare.registration != "none" else None,
               "input_flags": [f.to_dict() for f in modality_flags(mr, ct_vol.image)]},
        "slices": {"files": list(SLICE_FILES), "shape": list(stack.mr.shape), "window": list(stack.window),
                   "keep": keep.tolist(), "grid": geometry_of(grid if grid is not None else mr)},
        "timings_s": timings,
    }
