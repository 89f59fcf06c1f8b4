"""sCT quality on pseudo-paired real CT: the trained model vs a constant HU and an MR-intensity lookup.

Each real CT in ../shared is one patient; ``--sims`` simulated MRs per CT (different bias field, noise,
gain, grid and misalignment) make that patient's cases. One patient is held out (``--holdout``); the
others train. The whole pipeline runs: prepare (registration included), train the config for a fixed
wall-time budget, convert the held-out MRs, and score them against the ground-truth CT on the MR grid
(pseudo_pairs' ``--truth``, independent of our registration) inside the true body mask, with the
SynthRAD2023 metrics and bone MAE (true HU ≥ 300). The two baselines are fitted on the same training
patients in the same run. THE MR IS SIMULATED: these figures are not results on real paired data.

Usage:
    python benchmarks/quality.py [--minutes 10] [--config default|3d] [--set train.gan_weight=0 ...]
                                 [--ensemble K] [--planes axial,coronal,sagittal]
                                 [--holdout tcga0002] [--sims 3] [--device auto] [--out DIR] [--tag NAME]

Modes at equal wall-clock budgets (issue #15; reuse one --out so the cohort is prepared once):
    python benchmarks/quality.py --out Q --tag 2.5D                          # the default slice model
    python benchmarks/quality.py --out Q --tag 3D --config 3d                # 3D patches, sliding windows
    python benchmarks/quality.py --out Q --tag tri-planar --planes axial,coronal,sagittal
    python benchmarks/quality.py --out Q --tag ensemble-3 --ensemble 3       # three seeds
An ensemble's members share the budget (each trains minutes / members).
"""

from __future__ import annotations

import argparse
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from shared_data import available_patients, pseudo_cohort

from medtrans.config import load_config
from medtrans.convert import convert_cohort
from medtrans.data_prep.pipeline import prepare_cohort
from medtrans.evaluation.baselines import fit_baselines, lookup_sct
from medtrans.evaluation.metrics import compute_metrics
from medtrans.fsutil import write_json
from medtrans.inference import pick_device
from medtrans.intensity import MRNormalization
from medtrans.training.ensemble import train_ensemble
from medtrans.training.trainer import train

METRICS = ("mae", "psnr", "ssim", "mae_bone")


def score(sct: np.ndarray, truth_dir: Path) -> dict[str, float]:
    """SynthRAD2023 metrics of one sCT (HU array on the MR grid) against the case's ground truth."""
    gt = sitk.GetArrayFromImage(sitk.ReadImage(str(truth_dir / "ct_on_mr_grid.nii.gz"))).astype(np.float32)
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(truth_dir / "mask_on_mr_grid.nii.gz")))
    m = compute_metrics(gt, sct.astype(np.float32), mask)
    return {k: float(m[k]) for k in METRICS}


def mean_scores(rows: list[dict[str, float]]) -> dict[str, float]:
    return {k: float(np.mean([r[k] for r in rows])) for k in METRICS}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0, help="training wall-time budget")
    ap.add_argument("--config", default=None, help="config name or YAML (default: configs/default.yaml)")
    ap.add_argument("--set", action="append", default=[], help="config override section.key=value")
    ap.add_argument("--holdout", default="tcga0002", help="the patient held out for testing")
    ap.add_argument("--sims", type=int, default=3, help="simulated MRs per real CT")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--tag", default="", help="label of this configuration in the table")
    ap.add_argument("--out", type=Path, default=None, help="keep everything here (default: a temp folder)")
    ap.add_argument("--ensemble", type=int, default=1, help="train this many members (seeds); they share the budget")
    ap.add_argument("--planes", default=None, help="slice planes of the members, e.g. axial,coronal,sagittal")
    a = ap.parse_args()

    patients = available_patients()
    if len(patients) < 2 or a.holdout not in [p[0] for p in patients]:
        raise SystemExit("needs ../shared (real CTs and tools/pseudo_pairs.py) beside the checkout, "
                         f"with the held-out patient {a.holdout!r}")
    out = a.out or Path(tempfile.mkdtemp(prefix="medtrans_quality_"))
    out.mkdir(parents=True, exist_ok=True)
    cfg = load_config(a.config, overrides=a.set)
    device = str(pick_device(a.device))
    t0 = time.perf_counter()

    # 1. cohort: sims per patient; a patient's cases share the prefix "<patient>_"
    cohort, truth = out / "cohort", out / "truth"
    pseudo_cohort(cohort, truth, a.sims)
    # 2. prepare (registration included), then the patient-level split: held-out patient = test, no val
    manifest = prepare_cohort(cohort, out / "prep", cfg, workers=0, progress=False)
    if manifest["failed"]:
        raise SystemExit(f"prepare failed: {manifest['failed']}")
    names = [r["case"] for r in manifest["cases"]]
    test = [n for n in names if n.startswith(a.holdout + "_")]
    train_cases = [n for n in names if n not in test]
    manifest["split"] = {"train": train_cases, "val": [], "test": test}
    for r in manifest["cases"]:
        r["split"] = "test" if r["case"] in test else "train"
    write_json(out / "prep" / "manifest.json", manifest)
    t_prepare = time.perf_counter() - t0

    # 3. train for the budget: the trainer fixes the LR schedule's horizon from its measured step time, so that
    #    the decay completes within the budget (train.max_steps only caps it)
    run_cfg = load_config(None, base=cfg.to_dict(), overrides=["train.max_steps=1000000"])
    run = out / "run"
    if run.exists():
        shutil.rmtree(run)
    t = time.perf_counter()
    planes = [p.strip() for p in a.planes.split(",")] if a.planes else None
    if a.ensemble > 1 or planes:
        summary = train_ensemble(out / "prep", run, run_cfg, ensemble=a.ensemble, planes=planes,
                                 max_minutes=a.minutes, device=device, progress=True)
        summary["step"] = sum(m["step"] for m in summary["members"])  # steps of all members together
    else:
        summary = train(out / "prep", run, run_cfg, max_minutes=a.minutes, device=device, progress=True)
    t_train = time.perf_counter() - t
    steps = summary["step"]
    per_step = t_train / max(1, steps)

    # 4. convert the held-out MRs as a user would (raw MR in, sCT on its grid out), with and without flip TTA
    results: dict[str, list[dict[str, float]]] = {"model": [], "model + flip TTA": [], "constant HU": [],
                                                   "MR-intensity lookup": []}
    spec = MRNormalization.from_prepare(cfg.prepare)  # what prepare normalized the training pairs with
    lookup, constant = fit_baselines(out / "prep", train_cases, spec)
    t_convert = 0.0
    for case in test:
        for label, tta in (("model", False), ("model + flip TTA", True)):
            dest = out / ("sct_tta" if tta else "sct")
            t = time.perf_counter()
            rec = convert_cohort(run, cohort / case, dest, device=device, tta=tta, overwrite=True, progress=False)[0]
            if not tta:
                t_convert += time.perf_counter() - t
            if rec["status"] != "ok":
                raise SystemExit(f"convert failed: {rec}")
            sct = sitk.GetArrayFromImage(sitk.ReadImage(str(dest / case / "sct.nii.gz")))
            results[label].append(score(sct, truth / case))
        mr = sitk.ReadImage(str(cohort / case / "mr.nii.gz"))
        results["MR-intensity lookup"].append(score(sitk.GetArrayFromImage(lookup_sct(lookup, mr, spec)),
                                                    truth / case))
        results["constant HU"].append(score(np.full(mr.GetSize()[::-1], constant, np.float32), truth / case))

    table = {label: mean_scores(rows) for label, rows in results.items()}
    record = {
        "what": "pseudo-pairs (real CT, SIMULATED MR); not real paired data",
        "tag": a.tag, "config": run_cfg.to_dict(), "overrides": a.set, "holdout": a.holdout,
        "ensemble": a.ensemble, "planes": planes,
        "train_patients": sorted({n.rsplit("_sim", 1)[0] for n in train_cases}), "sims_per_patient": a.sims,
        "device": device, "cpu_threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
        "gpu": torch.cuda.get_device_name() if device.startswith("cuda") else None,
        "budget_minutes": a.minutes, "steps": summary["step"], "seconds_per_step": per_step,
        "seconds": {"prepare": t_prepare, "train": t_train, "convert_per_case": t_convert / max(len(test), 1)},
        "mean_over_heldout_cases": table, "per_case": results,
    }
    record_file = out / (f"quality_{a.tag}.json" if a.tag else "quality.json")
    write_json(record_file, record)
    hw = record["gpu"] or f"{record['cpu_threads']} CPU threads"
    print(f"\nheld-out patient {a.holdout} ({len(test)} simulated MRs); trained on {record['train_patients']}; "
          f"{summary['step']} steps in {t_train / 60:.1f} min on {hw}{' [' + a.tag + ']' if a.tag else ''}")
    print("| method (held-out patient) | MAE HU | PSNR dB | SSIM | bone MAE HU |\n|---|---|---|---|---|")
    for label, m in table.items():
        print(f"| {label} | {m['mae']:.1f} | {m['psnr']:.2f} | {m['ssim']:.3f} | {m['mae_bone']:.0f} |")
    print(f"record: {record_file}")


if __name__ == "__main__":
    main()
