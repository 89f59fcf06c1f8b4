"""``medtrans convert``: a model bundle plus MR volumes -> synthetic CT files, for whole cohorts.

Each case is written to ``OUT/<case>/`` and completed by ``sct.json`` (written last, atomically), so a
killed run leaves no half-written sCT and a rerun finishes the remaining cases. Whether a finished case is
current is decided from its :class:`~medtrans.provenance.Provenance` (the MR's SHA-256, the bundle's hash, the
series, the output options including ``--strict``, and the medtrans version), never from the presence of files: a case whose provenance differs is redone, and the
reason is reported.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
import traceback
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
from tqdm import tqdm

import medtrans
from medtrans.bundle import Bundle, load_bundle, model_members
from medtrans.cohort import Case, discover
from medtrans.config import Config
from medtrans.dicom_out import new_link, write_dicom_series
from medtrans.errors import InputError, MedtransError
from medtrans.formats import SCT_OUTPUTS, SCT_RECORD, UNCERTAINTY_OUTPUTS, remove_outputs, sct_record
from medtrans.fsutil import sha256_of, sweep_stale_temps, write_json
from medtrans.geometry import geometry_of
from medtrans.inference import (
    ERROR_PASSES,
    UNCERTAINTY_PASSES,
    FusedPredictor,
    Stopwatch,
    pick_device,
    predictor_from_bundle,
)
from medtrans.intensity import AIR_HU, mr_foreground, normalize_mr_with_foreground
from medtrans.io import Volume, read_volume, require_signal, write_volume
from medtrans.modes import Mode, check_mode
from medtrans.output_dirs import claim_output_dir, releases_outputs
from medtrans.provenance import Provenance
from medtrans.qa import Flag, flags_text, input_flags, mr_profile


def parse_shard(text: str | None) -> tuple[int, int]:
    """``'i/n'`` -> (i, n) with 0 <= i < n; None -> (0, 1)."""
    if text is None:
        return 0, 1
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise MedtransError(f"--shard must look like i/n (e.g. 0/4), not {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise MedtransError(f"--shard {text}: need 0 <= i < n")
    return i, n


def shard_cases(cases: list[Case], shard: tuple[int, int]) -> list[Case]:
    """Deterministic split of a cohort for job arrays: sort by name, take every n-th from i."""
    i, n = shard
    return sorted(cases, key=lambda c: c.name)[i::n]


def provenance(case: Case, *, bundle_hash: str, fmt: str, tta: bool, uncertainty: bool = False,
               strict: bool = False) -> Provenance:
    """What a case's sCT depends on: the MR, the model, the series and every option that changes the output (--strict
    too: a case converted with warnings must be redone, and fail, when --strict is asked for)."""
    if case.mr is None:
        raise InputError("; ".join(case.errors) or "no MR found", path=case.folder)
    try:
        mr_hash = sha256_of(case.mr.path)
    except OSError as exc:
        raise InputError(f"cannot be read: {exc.strerror or exc}", path=case.mr.path) from None
    return Provenance({"mr": mr_hash, "model": bundle_hash},
                      {"series_uid": case.mr.series_uid, "format": fmt, "tta_flip": tta, "uncertainty": uncertainty,
                       "strict": strict})


def stale_reason(case_dir: Path, current: Provenance) -> str | None:
    """None if ``case_dir`` holds a complete sCT made from exactly ``current``; else why it must be (re)done."""
    if not (case_dir / SCT_RECORD).is_file():
        return "new"
    record = sct_record(case_dir)
    if record is None:
        return "its sct.json is unreadable"
    reason = current.stale_reason(record.get("provenance"))
    if reason is None and not (case_dir / SCT_OUTPUTS[current.settings["format"]]).exists():
        return "its output is missing"
    return reason


def check_mode_of(bundle: Bundle) -> Mode:
    """A bundle's mode, checked (one clear error for a bundle this version cannot run)."""
    return check_mode(Config(model=bundle.model))


def overlap_input_checks(device: torch.device) -> bool:
    """Whether the MR's input checks run on a CPU thread beside inference: on an accelerator (the CPU is idle
    while the network runs); on a CPU they would only compete with it for the cores."""
    return device.type != "cpu"


@dataclass
class ConvertJob:
    """What every case of one ``convert`` run is converted with."""

    model: FusedPredictor
    fmt: str
    bundle_info: dict[str, Any]
    cut_note: str  #: how the model's mode cuts inputs (for the orientation flag)
    uncertainty: bool = False
    strict: bool = False
    series_description: str = "medtrans synthetic CT (not for diagnosis)"


def _read_and_normalize(case: Case, job: ConvertJob, clock: Stopwatch) -> tuple[Volume, tuple[sitk.Image, dict],
                                                                                np.ndarray]:
    """The MR, normalized once (the input profile and every ensemble member use it), and its foreground."""
    with clock("decode"):
        vol = read_volume(case.mr.path, series_uid=case.mr.series_uid, modality="MR")
        require_signal(vol, "MR")
    spec = job.model.mr_normalization
    with clock("normalize"):
        norm_image, norm_stats, foreground = normalize_mr_with_foreground(vol.image, spec)
        if spec.n4:  # the profile and the uncertainty summary describe the raw MR's foreground
            foreground = mr_foreground(np.maximum(sitk.GetArrayFromImage(vol.image).astype(np.float32), 0))
    return vol, (norm_image, norm_stats), foreground


def _require_passing(flags: list[Flag], *, strict: bool, path: Path) -> None:
    """An error flag fails the case, and so does a warning with ``--strict``."""
    failing = [f for f in flags if f.severity == "error" or (strict and f.severity == "warning")]
    if failing:
        only_warnings = strict and all(f.severity == "warning" for f in failing)
        raise InputError(flags_text(failing) + (" (--strict)" if only_warnings else ""), path=path)


def _checked_prediction(case: Case, job: ConvertJob, vol: Volume, normalized: tuple[sitk.Image, dict],
                        foreground: np.ndarray, timings: dict[str, float],
                        ) -> tuple[list[Flag], sitk.Image, sitk.Image | None]:
    """The input checks (:mod:`medtrans.qa`) and the prediction; on an accelerator the checks run on a CPU thread
    beside the network, and nothing is written before they pass."""
    clock = Stopwatch(timings)

    def check_input() -> list[Flag]:
        with clock("input_checks"):
            profile = mr_profile(vol.image, job.model.mr_normalization, normalized=normalized[0],
                                 foreground=foreground)
            return input_flags(profile, job.bundle_info.get("training_profile"), cut_note=job.cut_note)

    if not overlap_input_checks(job.model.device):
        flags = check_input()
        _require_passing(flags, strict=job.strict, path=case.mr.path)
        sct, spread = job.model.predict(vol.image, normalized=normalized, uncertainty=job.uncertainty,
                                        timings=timings)
        return flags, sct, spread
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(check_input)
        sct, spread = job.model.predict(vol.image, normalized=normalized, uncertainty=job.uncertainty,
                                        timings=timings)
    flags = pending.result()
    _require_passing(flags, strict=job.strict, path=case.mr.path)
    return flags, sct, spread


def _as_int16(sct: sitk.Image, reference: sitk.Image) -> sitk.Image:
    """HU rounded to int16 (air below, on the reference's exact grid)."""
    hu = sitk.GetArrayFromImage(sct)  # one copy, rounded and bounded in place (np.clip is several times slower)
    np.rint(hu, out=hu)
    np.maximum(hu, np.float32(AIR_HU), out=hu)
    np.minimum(hu, np.float32(32767), out=hu)
    out = sitk.GetImageFromArray(hu.astype(np.int16))
    out.CopyInformation(reference)
    return out


def _write_outputs(out_dir: Path, job: ConvertJob, vol: Volume, sct: sitk.Image, spread: sitk.Image | None,
                   foreground: np.ndarray) -> tuple[bool, dict[str, Any] | None]:
    """The sCT in the asked format (DICOM joins the MR's study where it came from DICOM), the uncertainty map;
    whether the DICOM joined the source study, and the map's summary."""
    sct_int, linked = _as_int16(sct, vol.image), False
    if job.fmt == "dicom":
        link = vol.dicom_link if vol.dicom_link and vol.dicom_link.get("StudyInstanceUID") else None
        linked = link is not None
        write_dicom_series(sct_int, out_dir / SCT_OUTPUTS["dicom"], modality="CT", link=link or new_link(),
                           series_description=job.series_description, derived=True,
                           extra={"DerivationDescription": "Synthetic CT computed from MR by medtrans",
                                  "BurnedInAnnotation": "NO"})
    else:
        write_volume(sct_int, out_dir / SCT_OUTPUTS[job.fmt])
    if not (job.uncertainty and spread is not None):
        return linked, None
    spread.CopyInformation(vol.image)
    write_volume(spread, out_dir / UNCERTAINTY_OUTPUTS[job.fmt])
    values = sitk.GetArrayViewFromImage(spread)
    values = values[foreground] if foreground.any() else values.ravel()
    record = {"output": UNCERTAINTY_OUTPUTS[job.fmt], "mean_in_body_hu": float(values.mean()),
              "p95_in_body_hu": float(np.percentile(values, 95)), "models": len(job.model.members)}
    if job.model.predicts_error:
        calibrated = job.model.calibrated
        # the map predicts |sCT - CT| per voxel: its mean over the body predicts the case's MAE
        record.update(kind="predicted absolute error", calibrated=calibrated, passes_per_model=len(ERROR_PASSES),
                      unit="HU (expected |sCT - CT|" + (", calibrated on held-out cases)" if calibrated else
                                                        ", not calibrated: the run had no validation cases)"),
                      predicted_mae_hu=float(values.mean()))
    else:
        record.update(kind="spread of test-time passes", unit="HU (standard deviation)",
                      passes_per_model=len(UNCERTAINTY_PASSES))
    return linked, record


def convert_case(case: Case, out_dir: Path, job: ConvertJob, prov: Provenance) -> dict[str, Any]:
    """Convert one case and write its outputs; returns the ``sct.json`` record.

    The MR is checked against the training profile in the bundle first (:mod:`medtrans.qa`): an error flag fails the
    case, and so does a warning with ``strict``. The members of an ensemble are fused; with ``uncertainty`` each runs
    the test-time passes too, and the voxelwise spread of all of them is written beside the sCT. Earlier outputs of
    the case are removed before anything is written, so that a failure or a kill leaves the case absent, never an
    old sCT beside a new input.
    """
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    if case.mr is None:
        raise InputError("; ".join(case.errors) or "no MR found", path=case.folder)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_outputs(out_dir)
    sweep_stale_temps(out_dir)  # left by a run killed mid-write
    vol, normalized, foreground = _read_and_normalize(case, job, Stopwatch(timings))
    flags, sct, spread = _checked_prediction(case, job, vol, normalized, foreground, timings)
    with Stopwatch(timings)("encode"):
        linked, unc_record = _write_outputs(out_dir, job, vol, sct, spread, foreground)
    timings["total"] = time.perf_counter() - t0
    member = job.model.members[0]
    record = {
        "case": case.name, "status": "ok", "output": SCT_OUTPUTS[job.fmt], "format": job.fmt,
        "input": case.mr.describe(), "geometry": geometry_of(vol.image), "input_reconstruction": vol.reconstruction,
        "flags": [f.to_dict() for f in flags], "uncertainty": unc_record, "dicom_linked_to_source_study": linked,
        "provenance": prov.to_dict(), "bundle_sha256": prov.inputs["model"],
        "bundle": {k: job.bundle_info.get(k) for k in ("trained_steps", "selected", "best_val_mae_hu", "model")},
        "models": len(job.model.members), "tta_flip": member.tta_flip,
        "software": {"medtrans": medtrans.__version__, "torch": torch.__version__, "python": platform.python_version()},
        "device": str(member.device), "timings_s": timings,
    }
    write_json(out_dir / SCT_RECORD, record)  # last: marks the case complete
    return record


@releases_outputs
def convert_cohort(model: str | Path | list[str | Path], input_path: str | Path, out: str | Path, *,
                   fmt: str = "nifti", device: str = "auto", batch_size: int = 0, shard: str | None = None,
                   overwrite: bool = False, tta: bool = False, progress: bool = True, allow_nonempty: bool = False,
                   mr_series: str | None = None, uncertainty: bool = False,
                   strict: bool = False, cases: Collection[str] | None = None) -> list[dict[str, Any]]:
    """Convert every case under ``input_path``; failures are recorded and the others go on.

    Args:
        model: a run folder or bundle, or several (an ensemble: their sCTs are averaged with equal weights); an
            ensemble run folder (``train --ensemble``/``--planes``) stands for all its members, so a tri-planar
            run fuses its axial, coronal and sagittal models.
        uncertainty: also write the expected absolute error per voxel (HU; older bundles: the spread of test-time
            passes and ensemble members) and the case's predicted MAE (docs/trust.md).
        strict: fail a case that has any warning flag (by default warnings are recorded and the case converts).
        cases: convert only the cases of these names (e.g. a fold's held-out cases); the others are left alone.

    Each result has ``status`` ``ok`` (converted; ``reason`` says why when an earlier output was replaced),
    ``skipped`` (already current) or ``failed`` (``error``).
    """
    if fmt not in SCT_OUTPUTS:
        raise MedtransError(f"--format must be one of {', '.join(SCT_OUTPUTS)}")
    given = list(model) if isinstance(model, (list, tuple)) else [model]
    models = [member for m in given for member in model_members(m)]  # an ensemble run stands for its members
    bundles = [load_bundle(m) for m in models]
    if len({json.dumps(b.mr_normalization.to_dict()) for b in bundles}) > 1:
        raise MedtransError("the models of an ensemble must share one MR normalization; these differ: "
                            + ", ".join(str(m) for m in models))
    wanted = set(cases) if cases is not None else None
    cases = shard_cases([c for c in discover(input_path, mr_series=mr_series) if wanted is None or c.name in wanted],
                        parse_shard(shard))
    out = claim_output_dir(out, kind="convert", inputs=[input_path, *given], signatures=[f"*/{SCT_RECORD}"],
                           allow_nonempty=allow_nonempty)
    dev = pick_device(device)
    modes = [check_mode_of(b) for b in bundles]
    job = ConvertJob(FusedPredictor([predictor_from_bundle(b, device=dev, batch_size=batch_size, tta_flip=tta)
                                     for b in bundles]), fmt, bundles[0].info,
                     "; ".join(dict.fromkeys(m.cut_note for m in modes)), uncertainty, strict)
    hashes = [b.hash() for b in bundles]
    bundle_hash = hashes[0] if len(hashes) == 1 else hashlib.sha256("".join(hashes).encode()).hexdigest()
    results = []
    for case in tqdm(cases, desc="convert", unit="case", disable=not progress):
        case_dir = out / case.name
        try:
            prov = provenance(case, bundle_hash=bundle_hash, fmt=fmt, tta=tta, uncertainty=uncertainty, strict=strict)
            reason = "--overwrite" if overwrite else stale_reason(case_dir, prov)
            if reason is None:
                results.append({"case": case.name, "status": "skipped", "reason": "up to date"})
                continue
            rec = convert_case(case, case_dir, job, prov)
            results.append({**rec, "reason": reason})
        except MedtransError as exc:
            results.append({"case": case.name, "status": "failed", "error": str(exc)})
        except Exception as exc:
            results.append({"case": case.name, "status": "failed", "error": f"{type(exc).__name__}: {exc}",
                            "traceback": traceback.format_exc(limit=4)})
    return results + (orphans(out, {c.name for c in cases}, record=SCT_RECORD) if wanted is None else [])


def orphans(out: Path, current: set[str], *, record: str) -> list[dict[str, Any]]:
    """Case folders of an earlier run whose input is no longer among the inputs (left in place, and said)."""
    found = sorted(d.name for d in out.iterdir() if d.is_dir() and d.name not in current and (d / record).is_file())
    return [{"case": name, "status": "orphaned", "reason": "its input is not among the inputs now (left in place)"}
            for name in found]
