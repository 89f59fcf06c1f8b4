"""A self-contained HTML study report (figures embedded as PNG data URIs, no identifiers)."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Callable
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from medtrans.fsutil import write_text

MAX_CASE_FIGURES = 3  # best and worst few of a large cohort


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _metric_plot(rows: list[dict[str, Any]], columns: list[str]) -> str:
    cols = [c for c in columns if c in ("mae", "psnr", "ssim", "ms_ssim", "mae_bone")]
    fig, axes = plt.subplots(1, len(cols), figsize=(3 * len(cols), 3))
    axes = np.atleast_1d(axes)
    rng = np.random.default_rng(0)
    for ax, col in zip(axes, cols, strict=True):
        v = np.array([r[col] for r in rows if np.isfinite(r[col])])
        if v.size:
            ax.boxplot(v, widths=0.5, showfliers=False)
            ax.scatter(1 + rng.uniform(-0.12, 0.12, v.size), v, s=14, alpha=0.7, color="tab:blue")
        ax.set_title(col.upper())
        ax.set_xticks([])
    fig.tight_layout()
    return _png(fig)


def _montage(d: dict[str, Any]) -> str:
    ct, sct, mask = d["ct"], d["sct"], d["mask"]
    err = np.where(mask, sct - ct, 0)
    zc, yc, xc = (int(np.mean(ax)) for ax in np.nonzero(mask))
    sp = d["spacing"]
    planes = [("axial", lambda a: a[zc], sp[1] / sp[0]), ("coronal", lambda a: a[::-1, yc], sp[2] / sp[0]),
              ("sagittal", lambda a: a[::-1, :, xc], sp[2] / sp[1])]
    vols = [("MR", d.get("mr"), "gray", None), ("CT", ct, "gray", (-1000, 1500)), ("sCT", sct, "gray", (-1000, 1500)),
            ("sCT - CT (HU)", err, "seismic", (-500, 500))]
    vols = [v for v in vols if v[1] is not None]
    fig, axes = plt.subplots(3, len(vols), figsize=(2.6 * len(vols), 7.5))
    for i, (pname, cut, aspect) in enumerate(planes):
        for j, (title, vol, cmap, lim) in enumerate(vols):
            ax = axes[i, j]
            kw = {"vmin": lim[0], "vmax": lim[1]} if lim else {}
            im = ax.imshow(cut(vol), cmap=cmap, aspect=aspect, **kw)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(title)
            if j == 0:
                ax.set_ylabel(pname)
            if title.startswith("sCT -") and i == 0:
                fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return _png(fig)


def _histograms(d: dict[str, Any]) -> str:
    ct, sct = d["ct"][d["mask"]], d["sct"][d["mask"]]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4))
    bins = np.linspace(-1024, 2000, 120)
    a.hist(ct, bins=bins, histtype="step", label="CT", density=True)
    a.hist(sct, bins=bins, histtype="step", label="sCT", density=True)
    a.set_yscale("log")
    a.set_xlabel("HU (inside mask)")
    a.legend()
    h, _, _ = np.histogram2d(ct, sct, bins=[bins, bins])
    b.imshow(np.log1p(h.T), origin="lower", extent=[bins[0], bins[-1], bins[0], bins[-1]], cmap="magma")
    b.plot([bins[0], bins[-1]], [bins[0], bins[-1]], "w--", lw=0.8)
    b.set_xlabel("CT HU")
    b.set_ylabel("sCT HU")
    b.set_title("joint histogram (log)")
    fig.tight_layout()
    return _png(fig)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "inf" if np.isinf(v) else f"{v:.4g}"
    return html.escape(str(v))


def _uncertainty_plot(samples: np.ndarray) -> str:
    """Binned measured |sCT - CT| against the predicted spread (deciles of the spread), pooled over cases."""
    spread, err = samples[:, 0], samples[:, 1]
    edges = np.unique(np.percentile(spread, np.linspace(0, 100, 11)))
    which = np.clip(np.searchsorted(edges, spread, side="right") - 1, 0, max(0, len(edges) - 2))
    centres = [float(np.median(spread[which == b])) for b in range(len(edges) - 1) if (which == b).any()]
    means = [float(err[which == b].mean()) for b in range(len(edges) - 1) if (which == b).any()]
    fig, ax = plt.subplots(figsize=(4.6, 3.6))
    ax.plot(centres, means, "o-", label="measured mean |sCT - CT|")
    top = max(max(centres, default=1), max(means, default=1))
    ax.plot([0, top], [0, top], "k--", lw=0.8, label="error = spread")
    ax.set_xlabel("predicted spread (HU, decile medians)")
    ax.set_ylabel("mean absolute error (HU)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


def write_report(path, *, rows: list[dict[str, Any]], summary: dict[str, Any], columns: list[str],
                 load: Callable[[str], dict[str, Any]], uncertainty: np.ndarray | None = None) -> None:
    """Render ``report.html``: summary, per-case table with flags, metric plots, error vs uncertainty, and
    figures of the best/worst cases.

    Args:
        load: returns a case's arrays (``ct``, ``sct``, ``mask``, ``spacing``, optional ``mr``) for its figures.
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
        rho = summary["metrics"].get("unc_spearman", {}).get("mean", float("nan"))
        parts.append("<h2 id='uncertainty'>Error vs uncertainty</h2><p>Measured absolute error against the "
                     "uncertainty map's predicted spread, in deciles of the spread, pooled over the cases that have "
                     f"a map. Mean per-case Spearman correlation {_fmt(rho)} (docs/trust.md).</p>"
                     f"<img alt='error vs uncertainty' src='{_uncertainty_plot(uncertainty)}'>")
    if rows:
        parts.append(f"<h2 id='plots'>Distributions</h2><img alt='metric distributions' src='{_metric_plot(rows, columns)}'>")
        ranked = sorted(rows, key=lambda r: r["mae"])
        chosen = ranked if len(ranked) <= 2 * MAX_CASE_FIGURES else ranked[:MAX_CASE_FIGURES] + ranked[-MAX_CASE_FIGURES:]
        parts.append("<h2 id='figures'>Cases (best and worst by MAE)</h2>")
        for r in chosen:
            d = load(r["case"])
            parts.append(f"<h3 class='case'>{html.escape(r['case'])} — MAE {r['mae']:.1f} HU</h3>"
                         f"<img alt='montage {html.escape(r['case'])}' src='{_montage(d)}'>"
                         f"<img alt='histograms {html.escape(r['case'])}' src='{_histograms(d)}'>")
    parts.append("</body></html>")
    write_text(path, "\n".join(parts))
