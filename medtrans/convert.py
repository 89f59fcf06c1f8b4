"""``medtrans convert``: a model bundle plus MR volumes -> synthetic CT files, for whole cohorts.

Each case is written to ``OUT/<case>/`` and completed by ``sct.json`` (written last, atomically), so a
killed run leaves no half-written sCT and a rerun finishes the remaining cases.
"""

from __future__ import annotations

import platform
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
from tqdm import tqdm

import medtrans
from medtrans.bundle import load_bundle
from medtrans.cohort import Case, discover
from medtrans.dicom_out import new_link, write_dicom_series
from medtrans.errors import InputError, MedtransError
from medtrans.fsutil import sweep_stale_temps, write_json
from medtrans.geometry import geometry_of
from medtrans.inference import pick_device, predictor_from_bundle
from medtrans.io import read_volume, write_volume

FORMATS = {"nifti": "sct.nii.gz", "mha": "sct.mha", "dicom": "sct_dicom"}


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


def convert_case(case: Case, out_dir: Path, predictor, *, fmt: str, bundle_hash: str, bundle_info: dict[str, Any],
                 series_description: str = "medtrans synthetic CT (not for diagnosis)") -> dict[str, Any]:
    """Convert one case and write its outputs; returns the ``sct.json`` record."""
    t0 = time.perf_counter()
    if case.mr is None:
        raise InputError("; ".join(case.errors) or "no MR found", path=case.folder)
    vol = read_volume(case.mr.path, series_uid=case.mr.series_uid, modality="MR")
    t_read = time.perf_counter() - t0
    t = time.perf_counter()
    sct = predictor.predict_image(vol.image)
    t_infer = time.perf_counter() - t
    t = time.perf_counter()
    hu = sitk.GetArrayFromImage(sct)
    sct_int = sitk.GetImageFromArray(np.clip(np.rint(hu), -1024, 32767).astype(np.int16))
    sct_int.CopyInformation(vol.image)
    out_dir.mkdir(parents=True, exist_ok=True)
    sweep_stale_temps(out_dir)  # left by a run killed mid-write
    linked = False
    if fmt == "dicom":
        link = vol.dicom_link if vol.dicom_link and vol.dicom_link.get("StudyInstanceUID") else None
        linked = link is not None
        write_dicom_series(sct_int, out_dir / FORMATS["dicom"], modality="CT", link=link or new_link(),
                           series_description=series_description, derived=True,
                           extra={"DerivationDescription": "Synthetic CT computed from MR by medtrans",
                                  "BurnedInAnnotation": "NO"})
    else:
        write_volume(sct_int, out_dir / FORMATS[fmt])
    t_write = time.perf_counter() - t
    record = {
        "case": case.name,
        "status": "ok",
        "output": FORMATS[fmt],
        "format": fmt,
        "geometry": geometry_of(vol.image),
        "dicom_linked_to_source_study": linked,
        "bundle_sha256": bundle_hash,
        "bundle": {k: bundle_info.get(k) for k in ("trained_steps", "selected", "best_val_mae_hu", "model")},
        "tta_flip": predictor.tta_flip,
        "software": {"medtrans": medtrans.__version__, "torch": torch.__version__, "python": platform.python_version()},
        "device": str(predictor.device),
        "timings_s": {"read": t_read, "inference": t_infer, "write": t_write, "total": time.perf_counter() - t0},
    }
    write_json(out_dir / "sct.json", record)  # last: marks the case complete
    return record


def convert_cohort(model: str | Path, input_path: str | Path, out: str | Path, *, fmt: str = "nifti",
                   device: str = "auto", batch_size: int = 0, shard: str | None = None, overwrite: bool = False,
                   tta: bool = False, progress: bool = True) -> list[dict[str, Any]]:
    """Convert every case under ``input_path``; failures are recorded and the others go on."""
    if fmt not in FORMATS:
        raise MedtransError(f"--format must be one of {', '.join(FORMATS)}")
    bundle = load_bundle(model)
    dev = pick_device(device)
    predictor = predictor_from_bundle(bundle, device=dev, batch_size=batch_size, tta_flip=tta)
    cases = shard_cases(discover(input_path), parse_shard(shard))
    out = Path(out)
    bundle_hash = bundle.hash()
    results = []
    for case in tqdm(cases, desc="convert", unit="case", disable=not progress):
        case_dir = out / case.name
        if not overwrite and (case_dir / "sct.json").is_file() and (case_dir / FORMATS[fmt]).exists():
            results.append({"case": case.name, "status": "skipped"})
            continue
        try:
            results.append(convert_case(case, case_dir, predictor, fmt=fmt, bundle_hash=bundle_hash,
                                        bundle_info=bundle.info))
        except MedtransError as exc:
            results.append({"case": case.name, "status": "failed", "error": str(exc)})
        except Exception as exc:
            results.append({"case": case.name, "status": "failed", "error": f"{type(exc).__name__}: {exc}",
                            "traceback": traceback.format_exc(limit=4)})
    return results
