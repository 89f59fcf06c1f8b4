"""The report's dose figure of a case, per modality: the dose on the CT, the same plan on the sCT, their difference
and the gamma map (2 %/2 mm) on the three mid planes through the target, with the DVH curves of target and body (CT
solid, sCT dashed) and the gamma histogram beside them."""

from __future__ import annotations

from typing import Any

import numpy as np

from medtrans.evaluation.dose import PLANES, gamma_plane


def _cumulative_dvh(dose: np.ndarray, where: np.ndarray, top: float) -> tuple[np.ndarray, np.ndarray]:
    levels = np.linspace(0.0, top, 200)
    d = np.sort(dose[where])
    volume = 100.0 * (1.0 - np.searchsorted(d, levels, side="left") / max(d.size, 1))
    return levels, volume


def _cut(a: np.ndarray, axis: int, index: int) -> np.ndarray:
    """A plane of a (z, y, x) array, the head up on coronal and sagittal cuts."""
    plane = np.take(a, index, axis=axis)
    return plane if axis == 0 else plane[::-1]


def _dvh_panel(ax, dose_ct: np.ndarray, dose_sct: np.ndarray, target: np.ndarray, body: np.ndarray,
               top: float) -> None:
    for mask, label, colour in ((target, "target", "tab:red"), (body & ~target, "body", "tab:blue")):
        for dose, style, who in ((dose_ct, "-", "CT"), (dose_sct, "--", "sCT")):
            ax.plot(*_cumulative_dvh(dose, mask, top), style, color=colour, label=f"{label} ({who})")
    ax.set_xlabel("dose (Gy)")
    ax.set_ylabel("volume (%)")
    ax.set_title("DVH", fontsize=9)
    ax.legend(fontsize=7)


def _gamma_panel(ax, gammas: list[np.ndarray]) -> None:
    values = np.concatenate([g[np.isfinite(g)] for g in gammas])
    ax.hist(np.minimum(values, 2.0), bins=40, range=(0, 2), color="tab:gray")
    ax.axvline(1.0, color="tab:red", linewidth=0.8)
    passed = 100.0 * np.mean(values <= 1.0) if values.size else float("nan")
    ax.set_title(f"gamma 2%/2mm, three planes: {passed:.1f} % pass", fontsize=9)
    ax.set_xlabel("gamma")


def dose_figure(f: dict[str, Any]) -> str:
    """A PNG (data URI) of :func:`medtrans.evaluation.dose.case_dose`'s figure data."""
    from medtrans.evaluation.report import _png, subplots

    doses, target, body, rx, sp = f["doses"], f["target"], f["body"], f["prescription"], f["spacing_mm"]
    centre = [int(np.round(np.mean(i))) for i in np.nonzero(target)]
    fig, axes = subplots(4 * len(doses), 4, figsize=(14, 12.4 * len(doses)))
    axes = np.atleast_2d(axes)
    for m, (modality, (dose_ct, dose_sct)) in enumerate(doses.items()):
        top = 1.15 * max(float(dose_ct.max()), float(dose_sct.max()), rx)
        gammas = [gamma_plane(dose_ct, dose_sct, sp, axis=axis, index=centre[axis], percent=2, mm=2,
                              prescription=rx) for _, axis in PLANES]
        rows = ((f"{modality}: dose on CT (Gy)", dose_ct, "jet", (0, top)),
                ("same plan on sCT (Gy)", dose_sct, "jet", (0, top)),
                ("sCT − CT (Gy)", dose_sct - dose_ct, "seismic", (-0.1 * rx, 0.1 * rx)),
                ("gamma 2%/2mm", None, "RdYlGn_r", (0, 2)))
        for r, (title, volume, cmap, lim) in enumerate(rows):
            row = axes[4 * m + r]
            for c, (plane, axis) in enumerate(PLANES):
                image = _cut(volume, axis, centre[axis]) if volume is not None else \
                    (gammas[c] if axis == 0 else gammas[c][::-1])
                inside = _cut(body, axis, centre[axis])
                im = row[c].imshow(np.where(inside, image, np.nan), cmap=cmap, vmin=lim[0], vmax=lim[1],
                                   interpolation="nearest")
                row[c].contour(_cut(target, axis, centre[axis]), levels=[0.5], colors="black", linewidths=0.8)
                row[c].set_title(f"{title}, {plane}", fontsize=9)
                row[c].set_xticks([])
                row[c].set_yticks([])
                fig.colorbar(im, ax=row[c], fraction=0.046)
            if r == 0:
                _dvh_panel(row[3], dose_ct, dose_sct, target, body, top)
            elif r == 3:
                _gamma_panel(row[3], gammas)
            else:
                row[3].axis("off")
    fig.subplots_adjust(left=0.03, right=0.98, top=0.97, bottom=0.04, wspace=0.55, hspace=0.3)
    return _png(fig)
