"""``medtrans evaluate --pred A=DIR --pred B=DIR``: several methods scored on the same cases, side by side.

Each method is evaluated as on its own (``OUT/<name>/``: metrics.csv, summary.json, report.html); then, on the
cases every method could be scored on, the comparison reports per-metric means, the paired difference of each
method from the first (the baseline) with a 95 % bootstrap confidence interval, and a Wilcoxon signed-rank test
(two-sided, on the per-case differences), plus a montage showing every method on the same slices.
"""

from __future__ import annotations

import csv
import html
from pathlib import Path
from typing import Any

import numpy as np

from medtrans.errors import MedtransError
from medtrans.evaluation.dose import DoseOptions
from medtrans.evaluation.evaluate import bootstrap_ci, evaluate_method, extra_columns_checked, load_pair
from medtrans.fsutil import atomic_path, sanitize_name, write_json, write_text
from medtrans.output_dirs import claim_output_dir, releases_outputs

#: Metrics compared (higher is better for psnr, the SSIMs and bone Dice, lower for the errors and distances).
COMPARED = ("mae", "psnr", "ssim", "ms_ssim", "mae_bone", "bone_dice", "bone_hd95_mm", "seg_dice", "seg_hd95_mm",
            *(f"{m}_{k}" for m in ("photon", "proton") for k in ("gamma_22", "gamma_33", "dose_mae_pct")))


def parse_preds(items: list[str]) -> dict[str, Path]:
    """``["NAME=DIR", "DIR", ...]`` -> {name: folder}; a bare folder (or an existing folder whose own name holds a
    ``=``, such as ``run=1``) is named after itself.

    Example:
        >>> parse_preds(["model=runs/sct", "lookup=base"])
        {'model': PosixPath('runs/sct'), 'lookup': PosixPath('base')}

    Raises:
        MedtransError: an empty name or folder, a name used twice, or two names that would share a report folder
            (they differ only in characters a folder name cannot hold).
    """
    preds: dict[str, Path] = {}
    for item in items:
        name, sep, folder = item.partition("=")
        if not sep or Path(item).is_dir():
            name, folder = Path(item).name, item
        if not name or not folder:
            raise MedtransError(f"--pred {item!r}: give a folder, or NAME=FOLDER")
        if name in preds:
            raise MedtransError(f"--pred: the method name {name!r} is used twice")
        preds[name] = Path(folder)
    folders: dict[str, str] = {}
    for name in preds:
        other = folders.setdefault(sanitize_name(name), name)
        if other != name:
            raise MedtransError(f"--pred: the method names {other!r} and {name!r} would share the report folder "
                                f"{sanitize_name(name)!r}; give them names that differ in letters or digits")
    return preds


def paired_test(baseline: np.ndarray, other: np.ndarray) -> dict[str, Any]:
    """Mean paired difference (other - baseline), its bootstrap 95 % CI and the Wilcoxon signed-rank p-value."""
    from scipy.stats import wilcoxon

    keep = np.isfinite(baseline) & np.isfinite(other)
    diff = other[keep] - baseline[keep]
    if diff.size == 0:
        return {"n": 0}
    p = float(wilcoxon(diff).pvalue) if diff.size >= 2 and np.any(diff != 0) else float("nan")
    lo, hi = bootstrap_ci(diff)
    return {"n": int(diff.size), "mean_diff": float(diff.mean()), "ci95": [lo, hi], "p_wilcoxon": p}


@releases_outputs
def compare(preds: dict[str, Path], ref: str | Path, out: str | Path, *, protocol: str = "synthrad2023",
            split: str | None = None, resample: bool = False, progress: bool = True,
            allow_nonempty: bool = False, dose: DoseOptions | None = None, segment: str | None = None
            ) -> dict[str, Any]:
    """Evaluate every method into ``out/<name>/`` and compare them on their common cases (see the module)."""
    if len(preds) < 2:
        raise MedtransError("a comparison needs at least two --pred NAME=DIR")
    missing = [f"{name}={folder}" for name, folder in preds.items() if not folder.is_dir()]
    if missing:  # before anything is evaluated or written
        raise MedtransError(f"--pred: no such folder: {', '.join(missing)}")
    extra_columns_checked(dose, segment)
    ref, out = Path(ref), Path(out)
    out = claim_output_dir(out, kind="evaluate", inputs=[*preds.values(), ref], signatures=["comparison.json"],
                           allow_nonempty=allow_nonempty)
    results = {}
    for name, folder in preds.items():
        summary, rows, pairs = evaluate_method(folder, ref, out / sanitize_name(name), protocol=protocol, split=split,
                                               resample=resample, progress=progress, dose=dose,
                                               segment=segment)
        results[name] = {"summary": summary, "rows": {r["case"]: r for r in rows},
                         "pairs": {p["case"]: p for p in pairs if "error" not in p}}
    names = list(preds)
    common = sorted(set.intersection(*(set(r["rows"]) for r in results.values())))
    metrics = [m for m in COMPARED if m in next(iter(results[names[0]]["rows"].values()), {})]
    values = {n: {m: np.array([results[n]["rows"][c][m] for c in common], np.float64) for m in metrics} for n in names}
    comparison = {
        "protocol": protocol, "methods": names, "baseline": names[0], "n_common": len(common), "cases": common,
        "means": {n: {m: float(np.nanmean(values[n][m])) if common else None for m in metrics} for n in names},
        "paired": {f"{n} - {names[0]}": {m: paired_test(values[names[0]][m], values[n][m]) for m in metrics}
                   for n in names[1:]},
        "problems": {n: results[n]["summary"]["problems"] for n in names},
    }
    with atomic_path(out / "comparison.csv") as tmp, open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["case", "split", "method", *metrics])
        for c in common:
            for n in names:
                row = results[n]["rows"][c]
                w.writerow([c, row.get("split", ""), n, *(row[m] for m in metrics)])
    write_json(out / "comparison.json", comparison)
    _write_report(out / "report.html", comparison, metrics, results, resample=resample)
    return comparison


def _write_report(path: Path, comparison: dict[str, Any], metrics: list[str], results: dict[str, Any], *,
                  resample: bool) -> None:
    from medtrans.evaluation.report import _fmt, _png, subplots

    names = comparison["methods"]
    parts = ["<!DOCTYPE html><html><head><meta charset='utf-8'><title>medtrans comparison</title>",
             "<style>body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#eee}img{max-width:100%}"
             "</style></head><body><h1>medtrans: methods compared</h1>",
             f"<p>{len(names)} methods on the {comparison['n_common']} cases every method could be scored on "
             f"(protocol {html.escape(comparison['protocol'])}). Baseline: <b>{html.escape(names[0])}</b>. Each "
             "method's own report is in its folder. Research use only.</p>",
             "<h2 id='means'>Means</h2><table><tr><th>method</th>" + "".join(f"<th>{m}</th>" for m in metrics)
             + "</tr>"]
    for n in names:
        parts.append(f"<tr><th>{html.escape(n)}</th>" + "".join(f"<td>{_fmt(comparison['means'][n][m])}</td>"
                                                              for m in metrics) + "</tr>")
    parts.append("</table><h2 id='paired'>Paired differences from the baseline</h2><p>Mean of per-case differences "
                 "(method − baseline), 95 % bootstrap CI, and the two-sided Wilcoxon signed-rank p-value.</p>"
                 "<table><tr><th>comparison</th><th>metric</th><th>n</th><th>mean difference</th><th>95% CI</th>"
                 "<th>Wilcoxon p</th></tr>")
    for label, tests in comparison["paired"].items():
        for m, t in tests.items():
            if t.get("n"):
                parts.append(f"<tr><th>{html.escape(label)}</th><td>{m}</td><td>{t['n']}</td>"
                             f"<td>{_fmt(t['mean_diff'])}</td><td>{_fmt(t['ci95'][0])}–{_fmt(t['ci95'][1])}</td>"
                             f"<td>{_fmt(t['p_wilcoxon'])}</td></tr>")
    parts.append("</table>")
    common = comparison["cases"]
    if common:
        by_mae = sorted(common, key=lambda c: results[names[0]]["rows"][c]["mae"])
        shown = list(dict.fromkeys([by_mae[0], by_mae[len(by_mae) // 2], by_mae[-1]]))
        parts.append("<h2 id='montage'>Every method on the same slices (best, median and worst case of the "
                     "baseline)</h2>")
        for case in shown:
            data = {n: load_pair(results[n]["pairs"][case], resample=resample) for n in names}
            ct, mask = data[names[0]]["ct"], data[names[0]]["mask"]
            z = int(np.mean(np.nonzero(mask)[0]))
            fig, axes = subplots(2, len(names) + 1, figsize=(2.6 * (len(names) + 1), 5.4))
            axes[0, 0].imshow(ct[z], cmap="gray", vmin=-1000, vmax=1500)
            axes[0, 0].set_title("CT")
            axes[1, 0].axis("off")
            for j, n in enumerate(names, start=1):
                sct = data[n]["sct"]
                axes[0, j].imshow(sct[z], cmap="gray", vmin=-1000, vmax=1500)
                axes[0, j].set_title(n)
                axes[1, j].imshow(np.where(mask[z], sct[z] - ct[z], 0), cmap="seismic", vmin=-500, vmax=500)
                axes[1, j].set_title(f"sCT − CT, MAE {results[n]['rows'][case]['mae']:.0f}")
            for ax in axes.ravel():
                ax.set_xticks([])
                ax.set_yticks([])
            fig.tight_layout()
            parts.append(f"<h3>{html.escape(case)}</h3><img alt='montage {html.escape(case)}' src='{_png(fig)}'>")
    parts.append("</body></html>")
    write_text(path, "\n".join(parts))
