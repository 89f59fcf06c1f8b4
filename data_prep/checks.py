"""The QA of a prepared case: images that do not look like their role, the registration check's flag, and which
flagged cases the manifest leaves out. Flags are :class:`medtrans.qa.Flag`; docs/trust.md says what each means."""

from __future__ import annotations

from typing import Any

import numpy as np
import SimpleITK as sitk

from medtrans.config import Config
from medtrans.qa import CT_MIN_AIR_FRACTION, Flag, looks_like_ct


def modality_flags(mr: sitk.Image, ct: sitk.Image) -> list[Flag]:
    """Flags for images that do not look like their role (an MR and a CT swapped, a CT without its rescale)."""
    flags = []
    air = float(np.mean(sitk.GetArrayViewFromImage(ct) < -500))
    if air < CT_MIN_AIR_FRACTION:
        flags.append(Flag("ct_not_in_hu", "warning",
                          f"only {100 * air:.2f} % of the CT is below -500 HU (air): it does not look like a CT in HU "
                          "(MR and CT swapped, or values stored without their rescale?)"))
    ct_like = looks_like_ct(float(np.mean(sitk.GetArrayViewFromImage(mr) < -200)))
    if ct_like is not None:  # a warning here: the case is left out of the split, not failed
        flags.append(Flag(ct_like.name, "warning", ct_like.reason))
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


#: A pair whose registered mutual information is less than this many times that of the poses 10 mm away is flagged:
#: another patient's CT (pseudo-pairs: 1.00-1.33 for other patients, 2.67-2.93 for the same patient; docs/trust.md).
MIN_PAIRING_GAIN = 1.8


def pairing_flags(gain: float | None) -> list[Flag]:
    """The pairing check's flag, from its recorded gain (:func:`medtrans.data_prep.registration_check.pairing_gain`)."""
    if gain is None or not gain < MIN_PAIRING_GAIN:
        return []
    return [Flag("pairing_doubtful", "warning",
                 f"MR and CT fit hardly better registered than 10 mm apart (mutual information {gain:.2f}x that of the "
                 f"shifted poses; the same patient's pseudo-pairs give 2.7-2.9, limit {MIN_PAIRING_GAIN}): is the CT another "
                 "patient's, or another body region?")]


def apply_qa(record: dict[str, Any], cfg: Config) -> None:
    """Set a prepared case's flags and exclusion from its recorded QA and the current QA settings."""
    qa = record["qa"]
    mm = (qa.get("registration_disagreement_mm") or {}).get("mean")
    flags = [*qa.get("input_flags", []), *(f.to_dict() for f in registration_flags(mm, cfg)),
             *(f.to_dict() for f in pairing_flags(qa.get("pairing_mi_gain")))]
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
