"""The report's dose figure of a case: dose on CT and on sCT and their difference through the target, and the
DVH curves of target and body (CT solid, sCT dashed), one row per modality."""

from __future__ import annotations

from typing import Any

import numpy as np


def _cumulative_dvh(dose: np.ndarray, where: np.ndarray, top: float) -> tuple[np.ndarray, np.ndarray]:
    levels = np.linspace(0.0, top, 200)
    d = np.sort(dose[where])
    volume = 100.0 * (1.0 - np.searchsorted(d, levels, side="left") / max(d.size, 1))
    return levels, volume


def dose_figure(f: dict[str, Any]) -> str:
    """A PNG (data URI) of :func:`medtrans.evaluation.dose.case_dose`'s figure data."""
    from medtrans.evaluation.report import _png, subplots

    doses, target, body, rx = f["doses"], f["target"], f["body"], f["prescription"]
    z = int(np.round(np.mean(np.nonzero(target)[0])))
    fig, axes = subplots(len(doses), 4, figsize=(14, 3.2 * len(doses)))
    axes = np.atleast_2d(axes)
    for row, (modality, (dose_ct, dose_sct)) in zip(axes, doses.items(), strict=True):
        top = 1.15 * max(float(dose_ct.max()), float(dose_sct.max()), rx)
        for ax, image, title, cmap, lim in (
                (row[0], dose_ct[z], f"{modality}: dose on CT (Gy)", "jet", (0, top)),
                (row[1], dose_sct[z], "same plan on sCT (Gy)", "jet", (0, top)),
                (row[2], (dose_sct - dose_ct)[z], "sCT − CT (Gy)", "seismic", (-0.1 * rx, 0.1 * rx))):
            im = ax.imshow(np.where(body[z], image, np.nan), cmap=cmap, vmin=lim[0], vmax=lim[1],
                           interpolation="nearest")
            ax.contour(target[z], levels=[0.5], colors="white", linewidths=0.8)
            ax.set_title(title, fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
            fig.colorbar(im, ax=ax, fraction=0.046)
        for mask, label, colour in ((target, "target", "tab:red"), (body & ~target, "body", "tab:blue")):
            for dose, style, who in ((dose_ct, "-", "CT"), (dose_sct, "--", "sCT")):
                row[3].plot(*_cumulative_dvh(dose, mask, top), style, color=colour, label=f"{label} ({who})")
        row[3].set_xlabel("dose (Gy)")
        row[3].set_ylabel("volume (%)")
        row[3].set_title("DVH", fontsize=9)
        row[3].legend(fontsize=7)
    fig.subplots_adjust(left=0.03, right=0.98, top=0.92, bottom=0.1, wspace=0.55, hspace=0.35)
    return _png(fig)
