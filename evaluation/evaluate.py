"""``medtrans evaluate``: pair sCT outputs with reference CTs and masks, score, summarize, report.

The reference is a cohort (``<case>/ct.*`` + ``mask.*``) or a prepared dataset (``manifest.json`` present), whose
cases are scored by split: the test split unless another is asked for, so that training cases never enter a
study's headline numbers unannounced. The sCT of a case is whatever ``convert`` wrote in any registered
format (:mod:`medtrans.formats`).
"""

from __future__ import annotations

import csv
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from medtrans.cohort import case_name, find_role_file
from medtrans.errors import GeometryError, InputError, MedtransError
from medtrans.evaluation.anatomy import bone_overlap
from medtrans.evaluation.dose import DoseOptions
from medtrans.formats import SCT_OUTPUTS, find_sct, find_uncertainty, sct_record
from medtrans.fsutil import atomic_path, write_json
from medtrans.geometry import on_grid_of, require_same_grid, same_grid
from medtrans.intensity import AIR_HU
from medtrans.io import read_volume
from medtrans.metrics import PROTOCOLS, compute_metrics
from medtrans.output_dirs import claim_output_dir, releases_outputs
from medtrans.prepared import CT_FILE, PreparedDataset

#: The reference CT of a case: a cohort's ``ct.*``, or a prepared dataset's registered CT.
CT_NAMES = ("ct", CT_FILE.split(".")[0])
SPLITS = ("test", "val", "train", "all")


def reference_splits(ref: Path) -> dict[str, str] | None:
    """case -> split from a prepared dataset's ``manifest.json``; None for a plain cohort."""
    if not PreparedDataset.is_prepared(ref):
        return None
    return PreparedDataset.open(ref).case_splits()


def pair_cases(pred: Path, ref: Path, *, split: str | None = None) -> list[dict[str, Any]]:
    """One entry per reference case: its CT, mask, MR (for figures), prediction (None if missing) and split.

    Args:
        pred: convert's output folder.
        ref: a cohort or a prepared dataset.
        split: for a prepared dataset, which cases to score (``test``, ``val``, ``train`` or ``all`` of them —
            not prepare's QA-excluded cases, which are in no split; default ``test``). A plain cohort has no
            splits: every case is scored and the split is ``None``.
    """
    if not ref.is_dir():
        raise InputError("reference cohort folder does not exist", path=ref)
    if split is not None and split not in SPLITS:
        raise MedtransError(f"--split must be one of {', '.join(SPLITS)}, not {split!r}")
    splits = reference_splits(ref)
    if splits is None and split not in (None, "all"):
        raise MedtransError(f"--split {split}: {ref} is not a prepared dataset (no manifest.json), so it has no splits")
    wanted = split or "test"
    pairs = []
    for d in sorted(p for p in ref.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))):
        name = case_name(d.name)
        case_split = splits.get(name) if splits is not None else None
        if splits is not None and (case_split is None or wanted not in ("all", case_split)):
            continue  # "all" is every case of the splits: prepare's QA-excluded cases are in none
        try:
            ct = find_role_file(d, *CT_NAMES)
            if ct is None:
                continue
            record = sct_record(pred / name) or {}
            pair = {"case": name, "split": case_split, "ct": ct, "mask": find_role_file(d, "mask"),
                    "mr": find_role_file(d, "mr"), "sct": find_sct(pred / name),
                    "uncertainty": find_uncertainty(pred / name),
                    "flags": [f["name"] for f in record.get("flags") or []],
                    "predicted_mae": (record.get("uncertainty") or {}).get("predicted_mae_hu")}
        except InputError as exc:  # e.g. two CT files in one case: reported, the others go on
            pair = {"case": name, "split": case_split, "error": str(exc)}
        pairs.append(pair)
    if not pairs:
        what = (f"no '{wanted}' cases in its manifest (its splits: "
                f"{', '.join(f'{k} {list(splits.values()).count(k)}' for k in ('train', 'val', 'test'))}; "
                "choose one with --split)") if splits is not None else \
            "no case folders with a ct (or ct_registered) image"
        raise InputError(f"holds {what}", path=ref)
    return pairs


def load_pair(pair: dict[str, Any], *, resample: bool, with_mr: bool = True) -> dict[str, Any]:
    """Read CT, sCT and mask as arrays on the CT grid (raising on geometry, mask or NaN problems); the MR too
    (for figures) when ``with_mr``. The files are read concurrently (decoding releases the GIL)."""
    if pair["mask"] is None:
        raise InputError("no mask file beside the reference CT", path=pair["ct"].parent)
    roles = ["ct", "sct", "mask"] + [r for r in ("uncertainty", "mr") if pair.get(r) is not None
                                     and (r != "mr" or with_mr)]
    with ThreadPoolExecutor(max_workers=len(roles)) as pool:
        futures = {r: pool.submit(read_volume, pair[r]) for r in roles}
    ct = futures["ct"].result().image
    try:
        sct = on_grid_of(futures["sct"].result().image, ct)
    except InputError as exc:
        raise InputError(f"sCT unusable: {exc}") from None
    mask = futures["mask"].result().image
    if resample:
        sct = sitk.Resample(sct, ct, sitk.Transform(), sitk.sitkLinear, AIR_HU, sitk.sitkFloat32)
        mask = sitk.Resample(mask, ct, sitk.Transform(), sitk.sitkNearestNeighbor, 0, mask.GetPixelID())
    require_same_grid(sct, ct, what_a=f"sCT {pair['sct']}", what_b=f"CT {pair['ct']}")
    require_same_grid(mask, ct, what_a=f"mask {pair['mask']}", what_b=f"CT {pair['ct']}")
    m = sitk.GetArrayViewFromImage(mask) > 0
    if not m.any():
        raise InputError("the mask is empty", path=pair["mask"])
    # the volumes as stored (int16 for CT and sCT): read-only views, no float copies of a 512x512x300 case; the
    # metrics read them slab by slab in float64. The images stay referenced as long as the views.
    out = {"ct": sitk.GetArrayViewFromImage(ct), "sct": sitk.GetArrayViewFromImage(sct), "mask": m,
           "spacing": ct.GetSpacing(), "images": (ct, sct)}
    if pair.get("uncertainty") is not None:
        unc = on_grid_of(futures["uncertainty"].result().image, ct)
        if resample:
            unc = sitk.Resample(unc, ct, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        require_same_grid(unc, ct, what_a=f"uncertainty {pair['uncertainty']}", what_b=f"CT {pair['ct']}")
        out["uncertainty"] = sitk.GetArrayFromImage(unc).astype(np.float32)
    if "mr" in futures:  # for figures only
        mr = futures["mr"].result().image
        if same_grid(mr, ct):
            out["mr"] = sitk.GetArrayFromImage(mr).astype(np.float32)
        elif resample or mr.GetSize() == ct.GetSize():
            mr = sitk.Resample(mr, ct, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
            out["mr"] = sitk.GetArrayFromImage(mr)
    return out


#: Voxels per case kept for the error-vs-uncertainty statistics (a seeded sample: memory stays bounded), and of
#: those, for the report's scatter plot.
UNCERTAINTY_SAMPLE = 200_000
UNCERTAINTY_SCATTER = 20_000


def uncertainty_vs_error(data: dict[str, Any], seed: int = 0) -> tuple[dict[str, float], np.ndarray]:
    """Spearman correlation of the uncertainty map with |sCT - CT| inside the mask, and a seeded random sample of
    at most :data:`UNCERTAINTY_SCATTER` (spread, error) pairs from the whole body for the report's scatter plot."""
    from scipy.stats import spearmanr

    m = data["mask"]
    spread = data["uncertainty"][m]
    err = np.abs(data["sct"][m].astype(np.float32) - data["ct"][m].astype(np.float32))
    rng = np.random.default_rng(seed)
    if spread.size > UNCERTAINTY_SAMPLE:
        keep = rng.choice(spread.size, UNCERTAINTY_SAMPLE, replace=False)
        spread, err = spread[keep], err[keep]
    rho = float(spearmanr(spread, err).statistic) if spread.size > 2 and spread.std() > 0 else float("nan")
    shown = rng.choice(spread.size, min(UNCERTAINTY_SCATTER, spread.size), replace=False)
    return {"unc_mean": float(spread.mean()), "unc_spearman": rho}, np.stack([spread[shown], err[shown]], axis=1)


def trust_summary(rows: list[dict[str, Any]], unc_samples: list[np.ndarray]) -> dict[str, Any]:
    """How well the uncertainty maps predict the error: the calibration error of the voxel maps (pooled samples,
    deciles of the predicted value; meaningful for maps of expected |error|, docs/trust.md) and the Spearman
    correlation of the predicted case MAE (convert's ``predicted_mae_hu``) with the measured one."""
    from scipy.stats import spearmanr

    from medtrans.calibration import calibration_error

    out: dict[str, Any] = {}
    if unc_samples:
        pooled = np.concatenate(unc_samples)
        out["voxel_calibration_error"], out["voxel_deciles"] = calibration_error(pooled[:, 0], pooled[:, 1])
    cases = [(r["pred_mae"], r["mae"]) for r in rows if r.get("pred_mae") is not None]
    if cases:
        predicted, measured = np.array(cases).T
        out["case_spearman"] = float(spearmanr(predicted, measured).statistic) if len(cases) >= 3 else None
        out["case_mean_predicted_over_measured"] = float(predicted.mean() / measured.mean())
        out["cases"] = len(cases)
    return out


def bootstrap_ci(values: np.ndarray, *, n: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile bootstrap interval of the mean."""
    if values.size < 2:
        return (float(values.mean()), float(values.mean())) if values.size else (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, (n, values.size))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def summarize(rows: list[dict[str, Any]], columns: list[str]) -> dict[str, Any]:
    """n, mean, std, median, IQR, min, max and a 95% bootstrap CI per metric (finite values only)."""
    summary: dict[str, Any] = {}
    for col in columns:
        v = np.array([r[col] for r in rows if r.get(col) is not None and np.isfinite(r[col])], np.float64)
        if v.size == 0:
            summary[col] = {"n": 0}
            continue
        q1, med, q3 = np.percentile(v, [25, 50, 75])
        lo, hi = bootstrap_ci(v)
        summary[col] = {"n": int(v.size), "mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0,
                        "median": float(med), "iqr": [float(q1), float(q3)], "min": float(v.min()),
                        "max": float(v.max()), "ci95": [lo, hi]}
    return summary


def segment_case(pair: dict[str, Any], data: dict[str, Any], *, region: str) -> dict[str, Any]:
    """Organ and bone overlap of the sCT's TotalSegmentator labels with the CT's (the case's ``segmentation.*``,
    else TotalSegmentator on the CT), over SynthRAD2025's classes of ``region``."""
    from medtrans.evaluation.anatomy import SEGMENT_CLASSES, segment_overlap
    from medtrans.evaluation.segment import SEGMENTATION_STEM, segment

    ct, sct = data["images"]
    given = find_role_file(Path(pair["ct"]).parent, SEGMENTATION_STEM)
    if given is not None:
        reference = sitk.Resample(read_volume(given).image, ct, sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                                  sitk.sitkUInt8)
    else:
        reference = segment(ct)
    scores, _ = segment_overlap(sitk.GetArrayFromImage(reference), sitk.GetArrayFromImage(segment(sct)),
                                classes=SEGMENT_CLASSES[region], spacing=data["spacing"])
    return scores


def score_case(pair: dict[str, Any], data: dict[str, Any], *, protocol: str, dose: DoseOptions | None,
               unc_samples: list[np.ndarray], segment: str | None = None) -> dict[str, Any]:
    """Every metric of one case: image (the protocol's), bone overlap, uncertainty vs error, and dose and organ
    overlap when asked."""
    metrics: dict[str, Any] = compute_metrics(data["ct"], data["sct"], data["mask"], protocol=protocol)
    metrics.update(bone_overlap(data["ct"], data["sct"], data["mask"], spacing=data["spacing"]))
    if segment is not None:
        metrics.update(segment_case(pair, data, region=segment))
    if pair.get("predicted_mae") is not None:  # convert's prediction of this case's MAE, from its error map
        metrics["pred_mae"] = float(pair["predicted_mae"])
    if "uncertainty" in data:
        unc_stats, sample = uncertainty_vs_error(data)
        metrics.update(unc_stats)
        unc_samples.append(sample)
    if dose is not None:
        from medtrans.evaluation.dose import case_dose, case_target

        ct, sct = data["images"]
        body = sitk.GetImageFromArray(data["mask"].astype(np.uint8))
        body.CopyInformation(ct)
        target, record = case_target(Path(pair["ct"]).parent, ct, roi=dose.target_roi)
        dose_metrics, figure = case_dose(ct, sct, body, target, modalities=dose.modalities, spacing_mm=dose.grid_mm,
                                         hlut=dose.hlut(), target_record=record)
        metrics.update(dose_metrics)
        data["dose"] = figure
    return metrics


def extra_columns_checked(dose: DoseOptions | None, segment: str | None) -> list[str]:
    """The dose and organ-overlap columns, after checking (one line, before anything is read or written) that their
    engines are installed, the HU table is usable and the region is known."""
    columns = []
    if dose is not None:
        from medtrans.evaluation.dose import dose_columns, require_engine

        require_engine()
        dose.hlut()
        columns += dose_columns(dose.modalities)
    if segment is not None:
        from medtrans.evaluation.segment import REGIONS, require_segmenter

        if segment not in REGIONS:
            raise MedtransError(f"--segment takes a SynthRAD2025 region: {', '.join(REGIONS)} (got {segment!r})")
        require_segmenter()
        columns += ["seg_dice", "seg_hd95_mm", "seg_classes"]
    return columns


def write_metrics_csv(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    """One row per scored case: its name, split, QA flags and every metric column (atomically written)."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["case", "split", "flags", *columns])
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in ["case", "split", "flags", *columns]})


def evaluate(pred: str | Path, ref: str | Path, out: str | Path, *, protocol: str = "synthrad2023",
             split: str | None = None, resample: bool = False, report: bool = True, progress: bool = True,
             allow_nonempty: bool = False, dose: DoseOptions | None = None, segment: str | None = None
             ) -> dict[str, Any]:
    """Score the reference cases; write metrics.csv, summary.json and report.html into ``out``.

    ``summary["problems"]`` lists the cases that could not be scored (the CLI then exits non-zero).
    """
    return evaluate_method(pred, ref, out, protocol=protocol, split=split, resample=resample, report=report,
                           progress=progress, allow_nonempty=allow_nonempty, dose=dose, segment=segment)[0]


@releases_outputs
def evaluate_method(pred: str | Path, ref: str | Path, out: str | Path, *, protocol: str = "synthrad2023",
                    split: str | None = None, resample: bool = False, report: bool = True, progress: bool = True,
                    allow_nonempty: bool = False, dose: DoseOptions | None = None, segment: str | None = None,
                    ) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """:func:`evaluate`, also returning the per-case rows and the case pairs (for comparisons of methods)."""
    if protocol not in PROTOCOLS:
        raise MedtransError(f"--protocol must be one of {', '.join(PROTOCOLS)}")
    pred, ref, out = Path(pred), Path(ref), Path(out)
    if not pred.is_dir():
        raise InputError("predictions folder does not exist", path=pred)
    extra_cols = extra_columns_checked(dose, segment)
    pairs = pair_cases(pred, ref, split=split)
    splits = sorted({p["split"] for p in pairs if p["split"]})
    claim_output_dir(out, kind="evaluate", inputs=[pred, ref], signatures=["summary.json"],
                     allow_nonempty=allow_nonempty)
    ssim_col = "ssim" if PROTOCOLS[protocol].ssim == "ssim" else "ms_ssim"
    columns = ["mae", "psnr", ssim_col, "me", "mae_air", "mae_soft", "mae_bone", "bone_dice", "bone_hd95_mm",
               *extra_cols]
    rows, problems, unc_samples = [], [], []
    dose_targets: dict[str, Any] = {}
    figures: dict[str, dict[str, Any]] = {}
    if report:
        from medtrans.evaluation.report import case_figure_data, figure_cases
    for pair in tqdm(pairs, desc="evaluate", unit="case", disable=not progress):
        if "error" in pair:
            problems.append({"case": pair["case"], "problem": pair["error"]})
            continue
        if pair["sct"] is None:
            formats = ", ".join(SCT_OUTPUTS.values())
            problems.append({"case": pair["case"], "problem": f"no sCT in {pred / pair['case']} (looked for "
                             f"{formats}; a convert output names its own in sct.json)"})
            continue
        try:
            data = load_pair(pair, resample=resample, with_mr=report)  # read_volume rejects NaN voxels
            metrics = score_case(pair, data, protocol=protocol, dose=dose, unc_samples=unc_samples, segment=segment)
        except (MedtransError, GeometryError, ValueError) as exc:
            problems.append({"case": pair["case"], "problem": str(exc)})
            continue
        rows.append({"case": pair["case"], "split": pair["split"] or "", "flags": "|".join(pair["flags"]), **metrics})
        if dose is not None:
            dose_targets[pair["case"]] = data["dose"]["target_record"]
        if report:  # figure data is taken now, for the best and worst so far: no volume is read twice
            figures[pair["case"]] = case_figure_data(data)
            keep = figure_cases(rows)
            figures = {case: f for case, f in figures.items() if case in keep}
        del data
    if unc_samples:
        columns += ["unc_mean", "unc_spearman"]
    if any("pred_mae" in r for r in rows):
        columns += ["pred_mae"]
    write_metrics_csv(out / "metrics.csv", rows, columns)
    summary = {"protocol": protocol, "splits": splits or None, "n_cases": len(pairs), "n_evaluated": len(rows),
               "metrics": summarize(rows, columns), "problems": problems,
               **({"dose": {**dose.record(), "targets": dose_targets}} if dose is not None else {}),
               **({"segment": segment_record(segment)} if segment is not None else {}),
               **({"trust": trust_summary(rows, unc_samples)} if unc_samples or "pred_mae" in columns else {})}
    write_json(out / "summary.json", summary)
    if report:
        from medtrans.evaluation.report import write_report

        write_report(out / "report.html", rows=rows, summary=summary, columns=columns, figures=figures,
                     uncertainty=np.concatenate(unc_samples) if unc_samples else None)
    return summary, rows, pairs


def segment_record(region: str) -> dict[str, Any]:
    """What ``--segment`` scored, for summary.json and the report."""
    from medtrans.evaluation.anatomy import SEGMENT_CLASSES
    from medtrans.evaluation.segment import MODEL_FOLDER_PREFIX, SEGMENTATION_STEM

    return {"region": region, "classes": list(SEGMENT_CLASSES[region]), "model": f"TotalSegmentator {MODEL_FOLDER_PREFIX}",
            "reference": f"the case's {SEGMENTATION_STEM}.* if given, else TotalSegmentator on the CT"}


def one_line(summary: dict[str, Any]) -> str:
    """``MAE x HU | PSNR y dB | SSIM z`` from a summary."""
    m = summary["metrics"]
    ssim_key = "ssim" if "ssim" in m else "ms_ssim"
    get = lambda k: m.get(k, {}).get("mean", float("nan"))  # noqa: E731
    return f"MAE {get('mae'):.1f} HU | PSNR {get('psnr'):.2f} dB | {ssim_key.upper()} {get(ssim_key):.3f}"

