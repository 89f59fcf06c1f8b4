"""A self-contained HTML study report (figures embedded as PNG data URIs, no identifiers)."""

from __future__ import annotations

import base64
import html
import io
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from medtrans.fsutil import write_text

MAX_CASE_FIGURES = 3  # best and worst few of a large cohort


def subplots(nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float]) -> tuple[Figure, Any]:
    """A figure and its axes without pyplot: no global figure registry, no backend set-up (pyplot's import
    alone is ~0.2 s of a short command), safe from threads."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols)


def _png(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)  # layouts are fixed by subplots_adjust: no tight-bbox redraw
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _metric_plot(rows: list[dict[str, Any]], columns: list[str]) -> str:
    cols = [c for c in columns if c in ("mae", "psnr", "ssim", "ms_ssim", "mae_bone", "bone_dice", "bone_hd95_mm")]
    fig, axes = subplots(1, len(cols), figsize=(3 * len(cols), 3))
    axes = np.atleast_1d(axes)
    rng = np.random.default_rng(0)
    for ax, col in zip(axes, cols, strict=True):
        v = np.array([r[col] for r in rows if np.isfinite(r[col])])
        if v.size:
            ax.boxplot(v, widths=0.5, showfliers=False)
            ax.scatter(1 + rng.uniform(-0.12, 0.12, v.size), v, s=14, alpha=0.7, color="tab:blue")
        ax.set_title({"bone_dice": "BONE DICE", "bone_hd95_mm": "BONE HD95 (mm)"}.get(col, col.upper()))
        ax.set_xticks([])
    fig.subplots_adjust(left=0.08, right=0.98, top=0.88, bottom=0.06, wspace=0.5)
    return _png(fig)


#: HU bins of the report's histograms (uniform, so counting is one ``bincount`` instead of a sorted search).
HIST_RANGE, HIST_BINS = (-1024.0, 2000.0), 119


def _bin_index(v: np.ndarray) -> np.ndarray:
    """Bin of each value in :data:`HIST_BINS` uniform bins over :data:`HIST_RANGE`; -1 outside (as np.histogram)."""
    lo, hi = HIST_RANGE
    x = np.subtract(v, lo, dtype=np.float32)
    x *= HIST_BINS / (hi - lo)
    idx = np.floor(x, out=x).astype(np.int32)
    idx[v == hi] = HIST_BINS - 1  # the last bin is closed, as numpy's
    idx[(idx < 0) | (idx >= HIST_BINS)] = -1
    return idx


def _centre(mask: np.ndarray) -> tuple[int, int, int]:
    """Index of the mask's centre of mass, per axis (the mean of its voxel indices, truncated)."""
    per_z = np.count_nonzero(mask.reshape(mask.shape[0], -1), axis=1)
    plane = mask.sum(axis=0, dtype=np.int64)
    n = per_z.sum()
    return (int(per_z @ np.arange(mask.shape[0]) / n), int(plane.sum(axis=1) @ np.arange(mask.shape[1]) / n),
            int(plane.sum(axis=0) @ np.arange(mask.shape[2]) / n))


def case_figure_data(d: dict[str, Any]) -> dict[str, Any]:
    """What the report draws of a case, taken while it is in memory: three planes through the mask's centre
    of MR/CT/sCT/error, and the CT/sCT histograms inside the mask (a few MB, so no volume is read twice).

    Example:
        >>> ct = np.full((4, 5, 6), -1000.0, np.float32); mask = np.zeros(ct.shape, bool); mask[1:3, 1:4, 1:5] = True
        >>> f = case_figure_data({"ct": ct, "sct": ct + 10, "mask": mask, "spacing": (1.0, 1.0, 2.0)})
        >>> int(f["hist_ct"].sum()), f["planes"][0][0]
        (24, 'axial')
    """
    ct, sct, mask = d["ct"], d["sct"], d["mask"]
    zc, yc, xc = _centre(mask)
    sp = d["spacing"]
    cuts = [("axial", lambda a: a[zc], sp[1] / sp[0]), ("coronal", lambda a: a[::-1, yc], sp[2] / sp[0]),
            ("sagittal", lambda a: a[::-1, :, xc], sp[2] / sp[1])]
    planes = []
    for name, cut, aspect in cuts:
        images = {"MR": cut(d["mr"]).copy() if d.get("mr") is not None else None, "CT": cut(ct).copy(),
                  "sCT": cut(sct).copy()}
        images["error"] = np.where(cut(mask), images["sCT"] - images["CT"], 0)
        planes.append((name, aspect, images))
    bc, bs = _bin_index(ct[mask]), _bin_index(sct[mask])
    both = (bc >= 0) & (bs >= 0)
    joint = np.bincount(bc[both] * HIST_BINS + bs[both], minlength=HIST_BINS**2).reshape(HIST_BINS, HIST_BINS)
    return {"planes": planes, "joint": joint, "dose": d.get("dose"),
            "hist_ct": np.bincount(bc[bc >= 0], minlength=HIST_BINS),
            "hist_sct": np.bincount(bs[bs >= 0], minlength=HIST_BINS)}


def _montage(f: dict[str, Any]) -> str:
    columns = [("MR", "gray", None), ("CT", "gray", (-1000, 1500)), ("sCT", "gray", (-1000, 1500)),
               ("error", "seismic", (-500, 500))]
    columns = [c for c in columns if f["planes"][0][2][c[0]] is not None]
    fig, axes = subplots(3, len(columns), figsize=(2.6 * len(columns), 7.5))
    for i, (pname, aspect, images) in enumerate(f["planes"]):
        for j, (key, cmap, lim) in enumerate(columns):
            ax = axes[i, j]
            kw = {"vmin": lim[0], "vmax": lim[1]} if lim else {}
            im = ax.imshow(images[key], cmap=cmap, aspect=aspect, interpolation="nearest", **kw)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title("sCT - CT (HU)" if key == "error" else key)
            if j == 0:
                ax.set_ylabel(pname)
            if key == "error" and i == 0:
                fig.colorbar(im, ax=ax, fraction=0.046)
    fig.subplots_adjust(left=0.05, right=0.92, top=0.95, bottom=0.02, wspace=0.06, hspace=0.1)
    return _png(fig)


def _histograms(f: dict[str, Any]) -> str:
    fig, (a, b) = subplots(1, 2, figsize=(9, 3.4))
    edges = np.linspace(*HIST_RANGE, HIST_BINS + 1)
    width = edges[1] - edges[0]
    for key, label in (("hist_ct", "CT"), ("hist_sct", "sCT")):
        counts = f[key]
        a.stairs(counts / max(counts.sum(), 1) / width, edges, label=label)
    a.set_yscale("log")
    a.set_xlabel("HU (inside mask)")
    a.legend()
    b.imshow(np.log1p(f["joint"].T), origin="lower", extent=[edges[0], edges[-1], edges[0], edges[-1]],
             cmap="magma", interpolation="nearest")
    b.plot([edges[0], edges[-1]], [edges[0], edges[-1]], "w--", lw=0.8)
    b.set_xlabel("CT HU")
    b.set_ylabel("sCT HU")
    b.set_title("joint histogram (log)")
    fig.subplots_adjust(left=0.08, right=0.98, top=0.9, bottom=0.16, wspace=0.3)
    return _png(fig)


def figure_cases(rows: list[dict[str, Any]]) -> set[str]:
    """The cases the report draws: all of a small cohort, else the :data:`MAX_CASE_FIGURES` best and worst by MAE.

    Applied after every scored case, it keeps the figure data of at most ``2 * MAX_CASE_FIGURES + 1`` cases in
    memory, whatever the cohort's size.
    """
    ranked = sorted(rows, key=lambda r: r["mae"])
    chosen = ranked if len(ranked) <= 2 * MAX_CASE_FIGURES else ranked[:MAX_CASE_FIGURES] + ranked[-MAX_CASE_FIGURES:]
    return {r["case"] for r in chosen}


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "inf" if np.isinf(v) else f"{v:.4g}"
    return html.escape(str(v))


def _uncertainty_plot(trust: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """The calibration curve (mean measured |sCT - CT| per decile of the map, against the decile's mean map value)
    and, where convert predicted them, the predicted against the measured case MAE."""
    cases = [(r["pred_mae"], r["mae"]) for r in rows if r.get("pred_mae") is not None]
    fig, axes = subplots(1, 2 if cases else 1, figsize=(9.2 if cases else 4.6, 3.6))
    axes = np.atleast_1d(axes)
    deciles = np.array(trust.get("voxel_deciles") or [[0.0, 0.0]])
    axes[0].plot(deciles[:, 0], deciles[:, 1], "o-", label="measured mean |sCT - CT|")
    top = float(deciles.max()) or 1.0
    axes[0].plot([0, top], [0, top], "k--", lw=0.8, label="measured = predicted")
    axes[0].set_xlabel("uncertainty map (HU, decile means)")
    axes[0].set_ylabel("mean absolute error (HU)")
    axes[0].set_title(f"calibration error {_fmt(trust.get('voxel_calibration_error', float('nan')))}", fontsize=9)
    axes[0].legend(fontsize=8)
    if cases:
        predicted, measured = np.array(cases).T
        axes[1].plot(predicted, measured, "o")
        top = float(max(predicted.max(), measured.max()))
        axes[1].plot([0, top], [0, top], "k--", lw=0.8)
        axes[1].set_xlabel("predicted case MAE (HU)")
        axes[1].set_ylabel("measured case MAE (HU)")
        rho = trust.get("case_spearman")
        axes[1].set_title(f"Spearman {_fmt(rho) if rho is not None else '- (under 3 cases)'}", fontsize=9)
    fig.subplots_adjust(left=0.1, right=0.97, top=0.9, bottom=0.14, wspace=0.3)
    return _png(fig)


def _uncertainty_section(summary: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    rho = summary["metrics"].get("unc_spearman", {}).get("mean", float("nan"))
    trust = summary.get("trust", {})
    return ("<h2 id='uncertainty'>Error vs uncertainty</h2><p>Measured absolute error against the uncertainty map, in "
            "deciles of the map, pooled over the cases that have one; a map of expected |error| lies on the diagonal "
            f"when calibrated. Mean per-case Spearman correlation (voxels) {_fmt(rho)}; calibration error (mean over "
            f"deciles of |map − measured| / measured) {_fmt(trust.get('voxel_calibration_error', float('nan')))} "
            f"(docs/trust.md).</p><img alt='error vs uncertainty' src='{_uncertainty_plot(trust, rows)}'>")


def _case_figures(rows: list[dict[str, Any]], figures: dict[str, dict[str, Any]]) -> list[str]:
    parts = ["<h2 id='figures'>Cases (best and worst by MAE)</h2>"]
    for r in sorted((r for r in rows if r["case"] in figures), key=lambda r: r["mae"]):
        f = figures[r["case"]]
        parts.append(f"<h3 class='case'>{html.escape(r['case'])} — MAE {r['mae']:.1f} HU</h3>"
                     f"<img alt='montage {html.escape(r['case'])}' src='{_montage(f)}'>"
                     f"<img alt='histograms {html.escape(r['case'])}' src='{_histograms(f)}'>")
        if f.get("dose"):
            from medtrans.evaluation.report_dose import dose_figure

            parts.append(f"<img alt='dose {html.escape(r['case'])}' src='{dose_figure(f['dose'])}'>")
    return parts


def _dose_text(d: dict[str, Any]) -> str:
    targets = {r["kind"] for r in d["targets"].values()}
    return ("<h2 id='dose'>Dose</h2><p>For each case a plan was optimized on the CT with pyRadPlan "
            f"({html.escape(', '.join(f'{k} {v}' for k, v in d['engine'].items()))}) and recomputed unchanged on "
            f"the sCT: {html.escape(', '.join(d['modalities']))}; photons {len(d['photon_gantry_deg'])} coplanar "
            f"beams, protons {len(d['proton_gantry_deg'])} fields; dose grid {d['grid_mm']:g} mm; HU table: "
            f"{html.escape(d['hlut'])}; target: {html.escape(', '.join(sorted(targets)))}. Dose metrics in % of "
            "the prescription (sCT − CT); gamma pass rates global, normalised to the prescription, 10 % cut-off "
            f"({d['gamma']['sampled_voxels']} sampled voxels). Each case's dose figure is beside its images "
            "below. See docs/metrics.md.</p>")


def write_report(path, *, rows: list[dict[str, Any]], summary: dict[str, Any], columns: list[str],
                 figures: dict[str, dict[str, Any]], uncertainty: np.ndarray | None = None) -> None:
    """Render ``report.html``: summary, per-case table with flags, metric plots, error vs uncertainty, and
    figures of the best/worst cases.

    Args:
        figures: :func:`case_figure_data` of the cases to draw (see :func:`figure_cases`), by case name.
        uncertainty: pooled (spread, absolute error) samples of the cases that have an uncertainty map.
    """
    parts = ["<!DOCTYPE html><html><head><meta charset='utf-8'><title>medtrans evaluation report</title>",
             "<style>body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#eee}"
             "img{max-width:100%}.warn{color:#a00}</style></head><body>",
             "<h1>medtrans evaluation report</h1>",
             f"<p>Protocol <b>{html.escape(summary['protocol'])}</b>; {summary['n_evaluated']} of "
             f"{summary['n_cases']} cases evaluated"
             + (f" from the <b>{html.escape('/'.join(summary['splits']))}</b> split of the prepared dataset"
                if summary.get("splits") else "")
             + ". Metrics in HU inside the body mask "
             "(see docs/metrics.md for definitions). Research use only.</p>",
             "<h2 id='summary'>Summary</h2><table><tr><th>metric</th><th>n</th><th>mean</th><th>std</th>"
             "<th>median</th><th>IQR</th><th>min</th><th>max</th><th>95% CI of mean</th></tr>"]
    for col in columns:
        s = summary["metrics"][col]
        if not s.get("n"):
            continue
        parts.append(f"<tr><th>{col}</th><td>{s['n']}</td><td>{_fmt(s['mean'])}</td><td>{_fmt(s['std'])}</td>"
                     f"<td>{_fmt(s['median'])}</td><td>{_fmt(s['iqr'][0])}–{_fmt(s['iqr'][1])}</td>"
                     f"<td>{_fmt(s['min'])}</td><td>{_fmt(s['max'])}</td>"
                     f"<td>{_fmt(s['ci95'][0])}–{_fmt(s['ci95'][1])}</td></tr>")
    parts.append("</table>")
    if summary["problems"]:
        parts.append("<h2 id='problems'>Cases not evaluated</h2><ul class='warn'>")
        parts += [f"<li>{html.escape(p['case'])}: {html.escape(p['problem'])}</li>" for p in summary["problems"]]
        parts.append("</ul>")
    parts.append("<h2 id='cases'>Per case</h2><table><tr><th>case</th><th>split</th><th>QA flags</th>"
                 + "".join(f"<th>{c}</th>" for c in columns) + "</tr>")
    for r in rows:
        flags = r.get("flags") or ""
        parts.append(f"<tr><th>{html.escape(r['case'])}</th><td>{html.escape(r.get('split') or '-')}</td>"
                     f"<td class='{'warn' if flags else ''}'>{html.escape(flags.replace('|', ', ') or '-')}</td>"
                     + "".join(f"<td>{_fmt(r.get(c, float('nan')))}</td>" for c in columns) + "</tr>")
    parts.append("</table>")
    if uncertainty is not None and len(uncertainty) > 10:
        parts.append(_uncertainty_section(summary, rows))
    if summary.get("dose"):
        parts.append(_dose_text(summary["dose"]))
    if summary.get("segment"):
        seg = summary["segment"]
        parts.append(f"<h2 id='segment'>Organs and bones</h2><p>{html.escape(seg['model'])} labels of the sCT "
                     f"against {html.escape(seg['reference'])}: Dice and HD95 (mm) per class of SynthRAD2025's "
                     f"{html.escape(seg['region'])} list present in the reference, averaged (seg_dice, seg_hd95_mm "
                     "in the table above). See docs/metrics.md.</p>")
    if rows:
        parts.append(f"<h2 id='plots'>Distributions</h2><img alt='metric distributions' src='{_metric_plot(rows, columns)}'>")
        parts += _case_figures(rows, figures)
    parts.append("</body></html>")
    write_text(path, "\n".join(parts))
