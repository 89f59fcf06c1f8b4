"""The QA of a prepared case: images that do not look like their role, the registration check's flag, and which
flagged cases the manifest leaves out. Flags are :class:`medtrans.qa.Flag`; docs/trust.md says what each means."""

from __future__ import annotations

from typing import Any

import numpy as np
import SimpleITK as sitk

from medtrans.config import Config
from medtrans.qa import Flag

#: A CT in HU has air: at least this share of its voxels below -500 HU (the outside of the body, sinuses, lungs).
CT_MIN_AIR_FRACTION = 0.005
#: An MR has (almost) no strongly negative values; a "MR" with this share below -200 is a CT in HU.
MR_MAX_NEGATIVE_FRACTION = 0.05


def modality_flags(mr: sitk.Image, ct: sitk.Image) -> list[Flag]:
    """Flags for images that do not look like their role (an MR and a CT swapped, a CT without its rescale)."""
    flags = []
    air = float(np.mean(sitk.GetArrayViewFromImage(ct) < -500))
    if air < CT_MIN_AIR_FRACTION:
        flags.append(Flag("ct_not_in_hu", "warning",
                          f"only {100 * air:.2f} % of the CT is below -500 HU (air): it does not look like a CT in HU "
                          "(MR and CT swapped, or values stored without their rescale?)"))
    negative = float(np.mean(sitk.GetArrayViewFromImage(mr) < -200))
    if negative > MR_MAX_NEGATIVE_FRACTION:
        flags.append(Flag("mr_looks_like_ct", "warning",
                          f"{100 * negative:.1f} % of the MR is below -200: it looks like a CT in HU (swapped?)"))
    return flags


def registration_flags(mean_mm: float | None, cfg: Config) -> list[Flag]:
    """The flag of the independent registration check (docs/trust.md), from its recorded disagreement.

    Whether mutual information improved over the initial pose is recorded but not flagged: on inputs that were
    already aligned a sub-millimetre move lowers it slightly, which flagged every such case as a false alarm.
    """
    if mean_mm is None or mean_mm <= cfg.prepare.qa_max_mm:
        return []
    return [Flag("registration_uncertain", "warning",
                 f"an independent registration disagrees by {mean_mm:.1f} mm on average over the body "
                 f"(limit prepare.qa_max_mm = {cfg.prepare.qa_max_mm:g} mm): the CT may be misaligned")]


def apply_qa(record: dict[str, Any], cfg: Config) -> None:
    """Set a prepared case's flags and exclusion from its recorded QA and the current QA settings."""
    qa = record["qa"]
    mm = (qa.get("registration_disagreement_mm") or {}).get("mean")
    flags = [*qa.get("input_flags", []), *(f.to_dict() for f in registration_flags(mm, cfg))]
    qa["flags"] = flags
    qa["excluded"] = bool(flags) and not cfg.prepare.qa_keep_flagged


def stage_notes(record: dict[str, Any]) -> list[str]:
    """What a reader of the prepare table should know about a case's registration: a turned start, a stage stopped
    by its iteration limit (it may not have converged)."""
    qa = record.get("qa", {})
    notes = []
    start = qa.get("start") or {}
    if start.get("orientation") not in (None, "unturned"):
        positions = qa.get("patient_position") or {}
        said = (f" although DICOM PatientPosition says {positions['mr']}/{positions['ct']} (check the position entries)"
                if positions.get("mr") and positions.get("ct") else "")
        notes.append(f"CT turned {start['orientation']} to match{said}")
    for s in qa.get("stages", []):
        if s.get("hit_iteration_limit"):
            notes.append(f"{s['stage']} stopped at its iteration limit ({s.get('max_iterations')}) on the "
                         f"{s.get('level_mm', 0):g} mm level")
    return notes
