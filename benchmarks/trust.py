"""Does the uncertainty map predict the error? Held-out pseudo-pairs, leave-one-patient-out.

Each real CT in ../shared is one patient; ``--sims`` simulated MRs per CT (different seeds: bias field, noise, gain,
grid and misalignment) make that patient's cases. For each patient P (a fold): a model is trained (``--minutes``) on
the other patients but one, validated — best weights and the calibration of its error output — on that one, and converts
P's MRs with ``--uncertainty`` exactly as ``medtrans convert`` does. Every case is thus scored by a model that saw
neither it nor its patient, with a calibration fitted on yet another patient. Against the ground-truth CT on the MR
grid (pseudo_pairs' ``--truth``, inside the true body mask) it reports:

* voxel Spearman(|sCT - CT|, map) per case (median and range);
* the calibration error: mean over deciles of the map (pooled over all cases) of |mean map - mean |error|| / mean
  |error| — 0 when the map says what the error is;
* case level: Spearman(predicted case MAE from sct.json, measured MAE) over all held-out cases;
* per case, in true bone (> 300 HU) and soft tissue (-100 to 100 HU): mean |error| and mean map;
* the cost: convert with ``--uncertainty`` over convert without, same model, same run.

THE MR IS SIMULATED: these figures are not results on real paired data.

``--steps N`` trains each fold N steps instead of ``--minutes`` (the same model whatever else the machine runs: the
figures then do not depend on its load; the cost ratio still does). ``--folds-only 1`` runs only those folds.

Usage: python benchmarks/trust.py [--minutes 4 | --steps N] [--sims 3] [--val-offset 1] [--folds-only I ...]
       [--device cpu|cuda] [--out DIR] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy.stats import spearmanr
from shared_data import available_patients, pseudo_cohort

from medtrans.calibration import calibration_error
from medtrans.config import load_config
from medtrans.convert import convert_cohort
from medtrans.data_prep.pipeline import prepare_cohort
from medtrans.fsutil import write_json
from medtrans.training.trainer import Trainer


def folds(patients: list[str], names: list[str], val_offset: int) -> list[dict[str, list[str]]]:
    """Patient i is the test fold; patient i + ``val_offset`` validates; the others train (with the shared CTs' order
    — two head and neck patients, then a thorax and an abdomen — offset 2 trains a head-and-neck test patient with the
    other one)."""
    of = {p: sorted(n for n in names if n.startswith(p + "_")) for p in patients}
    out = []
    for i, p in enumerate(patients):
        val = patients[(i + val_offset) % len(patients)]
        out.append({"test": of[p], "val": of[val],
                    "train": sorted(n for q in patients if q not in (p, val) for n in of[q])})
    return out


def score_case(case: str, sct_dir: Path, truth: Path) -> dict:
    gt = sitk.GetArrayFromImage(sitk.ReadImage(str(truth / case / "ct_on_mr_grid.nii.gz"))).astype(np.float32)
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(truth / case / "mask_on_mr_grid.nii.gz"))) > 0
    sct = sitk.GetArrayFromImage(sitk.ReadImage(str(sct_dir / case / "sct.nii.gz"))).astype(np.float32)
    unc = sitk.GetArrayFromImage(sitk.ReadImage(str(sct_dir / case / "sct_uncertainty.nii.gz")))
    err, u, hu = np.abs(sct - gt)[mask], unc[mask], gt[mask]
    record = json.loads((sct_dir / case / "sct.json").read_text())
    bands = {"bone": hu > 300, "soft": (hu > -100) & (hu < 100)}  # true tissue: does the map see where bone errs?
    return {"case": case, "mae": float(err.mean()), "predicted_mae": record["uncertainty"]["predicted_mae_hu"],
            "voxel_spearman": float(spearmanr(u, err).statistic), "samples": (u, err),
            **{f"{k}_{what}": float(v[b].mean()) if b.any() else None
               for k, b in bands.items() for what, v in (("error", err), ("map", u))}}


def arguments() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    budget = ap.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=float, default=4.0, help="training budget per fold (wall minutes)")
    budget.add_argument("--steps", type=int, default=None, help="training budget per fold (steps; load-independent)")
    ap.add_argument("--sims", type=int, default=3, help="simulated MRs per patient")
    ap.add_argument("--set", action="append", default=[], help="config override section.key=value")
    ap.add_argument("--val-offset", type=int, default=1, help="fold i validates on patient i + this")
    ap.add_argument("--folds-only", type=int, nargs="+", default=None, help="run only these folds (0-based)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or auto (training and conversion)")
    ap.add_argument("--out", type=Path, default=None)
    return ap.parse_args()


def run_folds(a: argparse.Namespace, out: Path) -> tuple[list[dict], float]:
    """Train (or reuse) each fold's model, convert its held-out cases with and without the map, score them. Returns
    the scored cases and the cost ratio of convert with the map over plain convert."""
    cohort, truth = out / "cohort", out / "truth"
    patients = pseudo_cohort(cohort, truth, a.sims)
    cfg = load_config(None, overrides=a.set)
    manifest = prepare_cohort(cohort, out / "prep", cfg, workers=0, progress=False)
    names = [c for part in ("train", "val", "test") for c in manifest["split"][part]]  # not those QA excluded
    rows, t_plain, t_unc = [], 0.0, 0.0
    run_cfg = load_config(None, base=cfg.to_dict(), overrides=[f"train.max_steps={a.steps or 1000000}"])
    for i, split in enumerate(folds(patients, names, a.val_offset)):
        if a.folds_only is not None and i not in a.folds_only:
            continue
        run = out / f"fold{i}"
        if not (run / "bundle" / "bundle.json").is_file():
            Trainer(out / "prep", run, run_cfg, max_minutes=None if a.steps else a.minutes, device=a.device,
                    split=split).run()
        t = time.perf_counter()
        convert_cohort(run, cohort, out / f"plain{i}", device=a.device, progress=False, cases=split["test"],
                       overwrite=True)
        t_plain += time.perf_counter() - t
        t = time.perf_counter()
        res = convert_cohort(run, cohort, out / "sct", device=a.device, progress=False, cases=split["test"],
                             uncertainty=True, overwrite=True)
        t_unc += time.perf_counter() - t
        assert all(r["status"] == "ok" for r in res), res
        rows += [score_case(c, out / "sct", truth) for c in split["test"]]
    return rows, t_unc / t_plain


def main() -> None:
    a = arguments()
    if len(available_patients()) < 3:
        raise SystemExit("needs ../shared (three real CTs at least and tools/pseudo_pairs.py) beside the checkout")
    out = a.out or Path(tempfile.mkdtemp(prefix="medtrans_trust_"))
    rows, cost = run_folds(a, out)
    pooled_u = np.concatenate([r["samples"][0] for r in rows])
    pooled_e = np.concatenate([r["samples"][1] for r in rows])
    cal, deciles = calibration_error(pooled_u, pooled_e)
    case_rho = float(spearmanr([r["predicted_mae"] for r in rows], [r["mae"] for r in rows]).statistic)
    voxel = [r["voxel_spearman"] for r in rows]
    record = {"what": "pseudo-pairs (real CT, SIMULATED MR), leave-one-patient-out; not real paired data",
              "cases": len(rows), "minutes_per_fold": None if a.steps else a.minutes, "steps_per_fold": a.steps,
              "overrides": a.set, "val_offset": a.val_offset, "folds_only": a.folds_only,
              "voxel_spearman": {"median": float(np.median(voxel)), "min": float(min(voxel)),
                                 "max": float(max(voxel))},
              "calibration_error": cal, "deciles_predicted_measured": deciles, "case_spearman": case_rho,
              "cost_uncertainty_over_plain": cost,
              "per_case": [{k: v for k, v in r.items() if k != "samples"} for r in rows]}
    write_json(out / "trust.json", record)
    print(f"{len(rows)} held-out cases ({len(rows) // a.sims} patients x {a.sims} simulated MRs), "
          + (f"{a.steps} steps" if a.steps else f"{a.minutes:g} min") + f" per fold ({a.device})")
    print(f"voxel Spearman(|error|, map): median {np.median(voxel):.3f} (range {min(voxel):.3f}-{max(voxel):.3f})")
    print(f"calibration error (deciles, pooled): {cal:.3f}")
    for p, m in deciles:
        print(f"  map {p:7.1f} HU -> measured {m:7.1f} HU")
    print(f"case level: Spearman(predicted MAE, measured MAE) {case_rho:.3f}")
    for r in rows:
        bone = f"{r['bone_error']:4.0f} -> {r['bone_map']:4.0f}" if r["bone_error"] is not None else "     -"
        print(f"  {r['case']:<18} predicted {r['predicted_mae']:6.1f}  measured {r['mae']:6.1f}  "
              f"voxel rho {r['voxel_spearman']:.3f}  true bone / soft tissue, error -> map (HU): {bone} / "
              f"{r['soft_error']:3.0f} -> {r['soft_map']:3.0f}")
    print(f"convert --uncertainty / plain convert: {cost:.2f}x")
    print(f"record: {out / 'trust.json'}")


if __name__ == "__main__":
    main()
