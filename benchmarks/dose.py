"""``evaluate --dose photon,proton`` on one case vs the plain engine + gamma script, same run.

The case is a synthetic 256x256x200 head-like volume at 1 mm (skull shell, brain, a couch slab outside the body;
the sCT has +40 HU in soft tissue and bone 150 HU too dark). medtrans: :func:`medtrans.evaluation.dose.case_dose`
(body-box dose grid, default target, photon + proton plans on the CT recomputed on the sCT, every metric, gamma at
2%/2mm and 3%/3mm). Plain: the whole field of view resampled by SimpleITK, a sphere at the centre, the same
pyRadPlan calls and gamma at 2%/2mm only. Most of either is the engine itself; the ratio shows what medtrans adds
around it. Wall time of each (median of ``--repeats``) and the ratio.

Needs the optional extra: pip install 'medtrans[dose]'.

Usage: python benchmarks/dose.py [--grid-mm 3] [--repeats 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import SimpleITK as sitk

from medtrans.evaluation.dose import GAMMA_SAMPLES, PHOTON_GANTRY, PRESCRIPTION_GY, PROTON_GANTRY, case_dose


def head_case(shape=(200, 256, 256)) -> tuple[sitk.Image, sitk.Image, sitk.Image]:
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    r = ((z - 100) / 90.0) ** 2 + ((y - 128) / 95.0) ** 2 + ((x - 128) / 75.0) ** 2
    ct = np.full(shape, -1000.0, np.float32)
    body = r < 1.0
    ct[body] = 35.0
    ct[body & (r > 0.8)] = 1100.0
    ct[:, 240:246] = 200.0  # couch
    sct = ct.copy()
    sct[body & (ct < 300)] += 40.0
    sct[body & (ct >= 300)] -= 150.0
    images = []
    for a in (ct, sct, body.astype(np.uint8)):
        img = sitk.GetImageFromArray(a)
        img.SetSpacing((1.0, 1.0, 1.0))
        images.append(img)
    return images[0], images[1], images[2]


def plain(ct: sitk.Image, sct: sitk.Image, body: sitk.Image, grid_mm: float) -> dict[str, float]:
    """What a researcher's script does around the engine: SimpleITK resampling of the whole field of view, a sphere
    at the centre, then the pyRadPlan calls (``dose_engine`` is nothing but those) and pymedphys gamma 2%/2mm."""
    import pymedphys

    from medtrans.evaluation.dose_engine import optimize_and_forward

    ref = sitk.Image([int(n * s / grid_mm) for n, s in zip(ct.GetSize(), ct.GetSpacing(), strict=True)],
                     sitk.sitkFloat32)
    ref.SetSpacing((grid_mm,) * 3)
    ref.SetOrigin(ct.GetOrigin())
    grids = {k: sitk.GetArrayFromImage(sitk.Resample(img, ref, sitk.Transform(), interp, fill))
             for k, img, interp, fill in (("ct", ct, sitk.sitkLinear, -1000), ("sct", sct, sitk.sitkLinear, -1000),
                                          ("body", body, sitk.sitkNearestNeighbor, 0))}
    grids["body"] = grids["body"] > 0
    z, y, x = np.ogrid[tuple(slice(0, n) for n in grids["ct"].shape)]
    c = [n / 2 for n in grids["ct"].shape]
    grids["target"] = ((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2) * grid_mm**2 < 20.0**2
    out = {}
    for modality, gantry in (("photon", PHOTON_GANTRY), ("proton", PROTON_GANTRY)):
        d_ct, d_sct = optimize_and_forward(grids, modality=modality, spacing_mm=grid_mm, prescription=PRESCRIPTION_GY,
                                           gantry=gantry, hlut=None)
        axes = tuple(np.arange(n) * grid_mm for n in d_ct.shape)
        np.random.seed(0)
        g = pymedphys.gamma(axes, d_ct, axes, d_sct, 2, 2, lower_percent_dose_cutoff=10,
                            global_normalisation=PRESCRIPTION_GY, random_subset=GAMMA_SAMPLES, quiet=True)
        out[f"{modality}_gamma_22"] = float(100 * np.mean(g[np.isfinite(g)] <= 1))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grid-mm", type=float, default=3.0)
    ap.add_argument("--repeats", type=int, default=1)
    a = ap.parse_args()
    ct, sct, body = head_case()
    times = {"medtrans": [], "plain": []}
    for _ in range(a.repeats):
        t = time.perf_counter()
        ours, _ = case_dose(ct, sct, body, None, modalities=("photon", "proton"), spacing_mm=a.grid_mm)
        times["medtrans"].append(time.perf_counter() - t)
        t = time.perf_counter()
        theirs = plain(ct, sct, body, a.grid_mm)
        times["plain"].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"256x256x200 at 1 mm, dose grid {a.grid_mm:g} mm, photon (5 beams) + proton (2 fields), gamma on "
          f"{GAMMA_SAMPLES} voxels")
    print(f"medtrans case_dose {med['medtrans']:.1f} s | plain engine + gamma {med['plain']:.1f} s | "
          f"ratio {med['medtrans'] / med['plain']:.2f}x")
    print("gamma 2%/2mm medtrans photon {:.1f} proton {:.1f} | plain photon {:.1f} proton {:.1f}".format(
        ours["photon_gamma_22"], ours["proton_gamma_22"], theirs["photon_gamma_22"], theirs["proton_gamma_22"]))


if __name__ == "__main__":
    main()
