"""``medtrans prepare``: raw patient folders -> a registration-aligned, normalized paired dataset.

Per case: read, register CT to MR, resample, body mask, normalize (the shared functions of
:mod:`medtrans.intensity`), cut slices, and write ``PREP/<case>/`` atomically; ``record.json`` is written
last and marks the case complete. ``PREP/manifest.json`` gathers every record, the resolved config and
the patient-level split. A case whose inputs and config are unchanged is skipped on rerun; any other is
redone, and the table says why.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import signal
import threading
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

import medtrans
from medtrans.cohort import Case, discover
from medtrans.config import Config, load_config
from medtrans.data_prep.case import prepare_case
from medtrans.data_prep.checks import apply_qa, stage_notes
from medtrans.errors import MedtransError
from medtrans.fsutil import sweep_stale_temps, write_json
from medtrans.geometry import canonical_spacing
from medtrans.io import read_volume
from medtrans.output_dirs import claim_output_dir, releases_outputs
from medtrans.prepared import MANIFEST, RECORD, PreparedCase
from medtrans.provenance import Provenance
from medtrans.qa import Flag, flags_text

#: Prepare keys that decide only the manifest (the split, which flagged cases stay in it), not a case's outputs:
#: they are left out of a case's key, so changing them re-writes the manifest without redoing any case.
MANIFEST_ONLY_KEYS = ("split", "split_seed", "qa_max_mm", "qa_keep_flagged")
#: The default working spacing is the cohort's median in-plane MR spacing, but no finer than this (mm): a 0.5 mm
#: clinical MR would otherwise cost four times the compute per slice and see a quarter of the body per crop.
MIN_WORKING_SPACING_MM = 1.0


def case_provenance(case: Case, cfg: Config) -> Provenance:
    """What a prepared case depends on: its input files, the prepare config (less :data:`MANIFEST_ONLY_KEYS`) and
    the medtrans version."""
    files = {role: src.path for role in ("mr", "ct", "mask") if (src := getattr(case, role)) is not None}
    settings = {k: v for k, v in cfg.to_dict()["prepare"].items() if k not in MANIFEST_ONLY_KEYS}
    return Provenance.of_files(files, settings)


def _die_with_parent(parent: int) -> None:
    """Make a worker process end when the prepare process that started it dies (even by SIGKILL).

    Otherwise an orphaned worker would go on writing into PREP after its parent is gone. Linux delivers
    SIGTERM at once through PR_SET_PDEATHSIG; elsewhere (and as a backstop) a thread polls the parent.
    """
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the parent died before the death signal was armed
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="medtrans-parent-watch").start()


def _worker(args: tuple[Case, str, dict[str, Any], int]) -> dict[str, Any]:
    case, out, cfg_dict, threads = args
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    cfg = load_config(None, base=cfg_dict)
    return run_case(case, Path(out), cfg)


def run_case(case: Case, out: Path, cfg: Config) -> dict[str, Any]:
    """Prepare one case unless an identical earlier run finished it; never raises for input problems."""
    folder = PreparedCase(out / case.name)
    try:
        prov = case_provenance(case, cfg)
    except OSError as exc:
        return {"case": case.name, "status": "failed", "error": f"cannot read inputs: {exc}"}
    redo = None
    if folder.record_path.exists():
        try:
            old = json.loads(folder.record_path.read_text())
            redo = prov.stale_reason(old.get("provenance"))
        except (json.JSONDecodeError, OSError, AttributeError):
            redo = "its record.json was unreadable"
        if redo is None and folder.is_complete():
            return {**old, "skipped": True}
        redo = redo or "its outputs were incomplete"
        folder.record_path.unlink()  # the case is incomplete from here until the new record is written
    try:
        sweep_stale_temps(folder.folder)  # left by a run killed mid-write
        rec = prepare_case(case, folder.folder, cfg)
    except MedtransError as exc:
        return {"case": case.name, "status": "failed", "error": str(exc)}
    except Exception as exc:
        return {"case": case.name, "status": "failed", "error": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc(limit=5)}
    rec["provenance"] = prov.to_dict()
    if redo:
        rec["redone_because"] = redo
    write_json(folder.record_path, rec)  # written last: its presence marks the case complete
    return rec


def _mr_canonical_spacing(case: Case) -> list[float] | None:
    """The MR's spacing on the canonical axes, from the header alone where the format allows (None if unreadable)."""
    if case.mr is None or case.errors:
        return None
    try:
        if case.mr.series_uid is None and case.mr.path.is_file() and case.mr.path.suffix != ".dcm":
            reader = sitk.ImageFileReader()
            reader.SetFileName(str(case.mr.path))
            reader.ReadImageInformation()
            header = sitk.Image([1, 1, 1], sitk.sitkUInt8)
            if reader.GetDimension() != 3:
                return None
            header.SetSpacing(reader.GetSpacing())
            header.SetDirection(reader.GetDirection())
            return canonical_spacing(header)
        return canonical_spacing(read_volume(case.mr.path, series_uid=case.mr.series_uid, modality="MR").image)
    except (MedtransError, RuntimeError, OSError):
        return None


def resolve_spacing(cases: list[Case], cfg: Config) -> tuple[list[float], str]:
    """The working spacing of a cohort: the config's, else the median in-plane MR spacing (isotropic in-plane), no finer
    than :data:`MIN_WORKING_SPACING_MM`.

    Returns:
        The spacing ([x, y] or [x, y, z] in mm on the canonical axes) and where it came from.
    """
    if cfg.prepare.spacing:
        return list(cfg.prepare.spacing), "prepare.spacing"
    in_plane = [v for case in cases if (sp := _mr_canonical_spacing(case)) for v in sp[:2]]
    if not in_plane:
        return [], "native (no readable MR)"
    median = round(float(np.median(in_plane)), 3)
    if median < MIN_WORKING_SPACING_MM:
        return [MIN_WORKING_SPACING_MM] * 2, (f"median in-plane spacing of {len(in_plane) // 2} MR(s) ({median:g} mm), "
                                              f"raised to the {MIN_WORKING_SPACING_MM:g} mm floor")
    return [median, median], f"median in-plane spacing of {len(in_plane) // 2} MR(s)"


def patient_split(names: list[str], fractions: list[float], seed: int) -> dict[str, str]:
    """Deterministic patient-level split: order by a seeded hash of the name, then cut by fractions."""
    order = sorted(names, key=lambda n: hashlib.sha256(f"{seed}:{n}".encode()).hexdigest())
    n = len(order)
    n_val = round(n * fractions[1])
    n_test = round(n * fractions[2])
    if n >= 3:
        n_val = max(n_val, 1)
    while n - n_val - n_test < 1 and (n_val or n_test):
        if n_test >= n_val and n_test:
            n_test -= 1
        else:
            n_val -= 1
    split = {}
    for i, name in enumerate(order):
        split[name] = "val" if i < n_val else "test" if i < n_val + n_test else "train"
    return split


@releases_outputs
def prepare_cohort(input_path: str | Path, out: str | Path, cfg: Config, *, workers: int = 1,
                   progress: bool = True, allow_nonempty: bool = False, mr_series: str | None = None,
                   ct_series: str | None = None) -> dict[str, Any]:
    """Prepare every case under ``input_path`` into ``out`` and write ``out/manifest.json``.

    Args:
        input_path: cohort folder, or one case folder.
        out: prepared dataset folder (never one of the input case folders).
        cfg: resolved configuration.
        workers: case processes; 0 = one per CPU core (at most one per case). Results do not depend on it.
        progress: show a progress bar.
        allow_nonempty: write into an ``out`` folder that holds other files.
        mr_series, ct_series: choose among several DICOM series per case (see :mod:`medtrans.cohort`).

    Returns:
        The manifest (``cases``: one record per case, ``failed`` listing the failures).
    """
    cases = discover(input_path, mr_series=mr_series, ct_series=ct_series)
    # PREP/<case>/mr.nii.gz must never land on an input file: --out may not overlap the input
    out = claim_output_dir(out, kind="prepare", inputs=[input_path],
                           signatures=[MANIFEST, f"*/{RECORD}"], allow_nonempty=allow_nonempty)
    # the resolved spacing goes into the config itself: it is part of every case's key and of the manifest
    spacing, spacing_source = resolve_spacing(cases, cfg)
    cfg_dict = cfg.to_dict()
    cfg_dict["prepare"]["spacing"] = spacing
    cfg = load_config(None, base=cfg_dict)
    records = _run_cases(cases, out, cfg, workers=workers, progress=progress)
    manifest = build_manifest(cases, records, cfg, input_path=input_path, out=out,
                              spacing={"mm": spacing or None, "source": spacing_source})
    write_json(out / MANIFEST, manifest)
    return manifest


def _run_cases(cases: list[Case], out: Path, cfg: Config, *, workers: int,
               progress: bool) -> dict[str, dict[str, Any]]:
    """Every case's record, prepared in this process or in ``workers`` processes (the same results either way)."""
    workers = max(1, min(workers if workers > 0 else (os.cpu_count() or 1), len(cases)))
    threads = max(1, (os.cpu_count() or 1) // workers)
    records: dict[str, dict[str, Any]] = {}
    bar = tqdm(total=len(cases), desc="prepare", unit="case", disable=not progress)
    if workers == 1:
        for case in cases:
            records[case.name] = run_case(case, out, cfg)
            bar.update()
    else:
        # spawn, not fork: the caller may hold threads (torch, SimpleITK) that a forked child would inherit locked
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_die_with_parent, initargs=(os.getpid(),)) as pool:
            futures = {pool.submit(_worker, (c, str(out), cfg.to_dict(), threads)): c for c in cases}
            for fut in as_completed(futures):
                rec = fut.result()
                records[rec["case"]] = rec
                bar.update()
    bar.close()
    return records


def orphaned_cases(out: Path, current: set[str]) -> list[str]:
    """Prepared cases of an earlier run whose input is no longer among the inputs (left in place, not in the split)."""
    return sorted(d.name for d in out.iterdir() if d.is_dir() and d.name not in current and (d / RECORD).is_file())


def build_manifest(cases: list[Case], records: dict[str, dict[str, Any]], cfg: Config, *, input_path: str | Path,
                   out: Path, spacing: dict[str, Any]) -> dict[str, Any]:
    """The manifest: QA flags and exclusions from the recorded QA and the current settings, the patient split."""
    for r in records.values():
        if r["status"] == "ok":
            apply_qa(r, cfg)
    excluded = sorted(n for n, r in records.items() if r["status"] == "ok" and r["qa"]["excluded"])
    ok = sorted(n for n, r in records.items() if r["status"] == "ok" and n not in excluded)
    split = patient_split(ok, cfg.prepare.split, cfg.prepare.split_seed)
    for name, r in records.items():
        r["split"] = split.get(name)
    return {
        "software": {"medtrans": medtrans.__version__, "simpleitk": sitk.Version_VersionString(),
                     "numpy": np.__version__},
        "input": str(Path(input_path).resolve()),
        "config": cfg.to_dict(),
        "working_spacing": spacing,
        "split": {s: [n for n in ok if split[n] == s] for s in ("train", "val", "test")},
        "cases": [records[c.name] for c in cases],
        "excluded": [{"case": n, "flags": records[n]["qa"]["flags"]} for n in excluded],
        "failed": [{"case": n, "error": r["error"]} for n, r in records.items() if r["status"] != "ok"],
        "orphaned": orphaned_cases(Path(out), set(records)),
    }


def summary_table(manifest: dict[str, Any]) -> str:
    """A plain-text table of the cases: status, split, registration QA (mm), time and flags."""
    rows = [f"{'case':<24} {'status':<8} {'split':<8} {'reg mm':>6} {'time s':>7}  note"]
    for r in manifest["cases"]:
        if r["status"] == "ok":
            qa = r["qa"]
            mm = (qa.get("registration_disagreement_mm") or {}).get("mean")
            notes = []
            if r.get("skipped"):
                notes.append("up to date")
            elif r.get("redone_because"):
                notes.append(f"redone: {r['redone_because']}")
            notes += stage_notes(r)
            flags = [Flag.from_dict(f) for f in qa.get("flags", [])]
            if flags:
                notes.append(("EXCLUDED: " if qa.get("excluded") else "kept: ") + flags_text(flags))
            split = r.get("split") or ("excluded" if qa.get("excluded") else "-")
            rows.append(f"{r['case']:<24} {'skipped' if r.get('skipped') else 'ok':<8} {split:<8} "
                        f"{'-' if mm is None else f'{mm:.1f}':>6} {r['timings_s']['total']:>7.1f}  {'; '.join(notes)}")
        else:
            rows.append(f"{r['case']:<24} {'FAILED':<8} {'-':<8} {'':>6} {'':>7}  {r['error']}")
    rows += [f"{name:<24} {'orphaned':<8} {'-':<8} {'':>6} {'':>7}  its input is not among the inputs now (left in "
             "place, not in the split)" for name in manifest.get("orphaned", [])]
    return "\n".join(rows)
