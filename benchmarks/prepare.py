"""``medtrans prepare`` (the whole command, one case) vs a plain SimpleITK multi-start rigid script, same run.

Cases (pseudo-pairs: real CT from ../shared, SIMULATED MR; never results on real paired data):

- ``clinical``: the clinical-size CT (512x611x237 at 0.49x0.49x0.625 mm, ``shared_data.clinical_ct``), its MR at
  0.5x0.5x2.5 mm, the subject turned 180 degrees about y and shifted up to 30 mm (seed 3);
- ``tcga0001-turned``: the issue's reproduction (TCGA head CT 0001, seed 3, turned about y, up to 30 mm);
- ``tcga0001``/``tcga0002``: the downsampled pairs of earlier rounds (up to 6 mm / 4 degrees).

The plain script is what the issue describes: both images resampled to 2 mm, CT body = largest connected component
after an opening (couch removed), MR body = Otsu closed and filled, 24 axis-aligned starts about the centres of mass
each refined briefly (30 iterations at 4 mm) with 20k samples, the best refined (rigid, 4 then 2 mm) with 50k samples. Both run as fresh processes; wall time, peak RSS (GNU time) and mean
TRE against the truth are printed, and their ratio. Usage: python benchmarks/prepare.py [--only NAME ...]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import SimpleITK as sitk
from shared_data import available_patients, clinical_ct, make_pseudo_pair, run_measured, tre, truth_transform

PLAIN_SCRIPT = r'''
import itertools, sys
import numpy as np, SimpleITK as sitk
mr_path, ct_path, out = sys.argv[1:4]
sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)  # as medtrans (reproducible Mattes MI)

def grid(img, mm):
    sp = np.maximum(np.array(img.GetSpacing()), mm)
    size = [max(1, round(n * s / t)) for n, s, t in zip(img.GetSize(), img.GetSpacing(), sp)]
    d = np.array(img.GetDirection()).reshape(3, 3)
    corner = np.array(img.GetOrigin()) - d @ (np.array(img.GetSpacing()) / 2)
    g = sitk.Image(size, sitk.sitkUInt8); g.SetSpacing(sp.tolist()); g.SetDirection(img.GetDirection())
    g.SetOrigin((corner + d @ (sp / 2)).tolist())
    return g

mr, ct = sitk.ReadImage(mr_path, sitk.sitkFloat32), sitk.ReadImage(ct_path, sitk.sitkFloat32)
f = sitk.Resample(mr, grid(mr, 2.0), sitk.Transform(), sitk.sitkLinear, 0.0)
m = sitk.Resample(ct, grid(ct, 2.0), sitk.Transform(), sitk.sitkLinear, -1024.0)
body = sitk.BinaryMorphologicalOpening(m > -400, [2, 2, 2])
body = sitk.RelabelComponent(sitk.ConnectedComponent(body), sortByObjectSize=True) == 1
m = sitk.Mask(m, body, -1024.0)
fmask = sitk.OtsuThreshold(f, 0, 1)  # MR body: Otsu, closed over the dark skull, largest component, filled
fmask = sitk.BinaryMorphologicalClosing(sitk.ConstantPad(fmask, [4] * 3, [4] * 3), [4] * 3)
fmask = sitk.BinaryFillhole(sitk.RelabelComponent(sitk.ConnectedComponent(sitk.Crop(fmask, [4] * 3, [4] * 3)),
                                                  sortByObjectSize=True) == 1)
fmask = sitk.Cast(fmask, sitk.sitkUInt8)
stats = sitk.LabelShapeStatisticsImageFilter()
stats.Execute(fmask); cf = np.array(stats.GetCentroid(1))
stats.Execute(sitk.Cast(body, sitk.sitkUInt8)); cm = np.array(stats.GetCentroid(1))
n_mask = int(sitk.GetArrayViewFromImage(fmask).sum())

def method(samples, shrink=(1,), sigma=(0,)):
    r = sitk.ImageRegistrationMethod()
    r.SetMetricAsMattesMutualInformation(48)
    r.SetMetricSamplingStrategy(r.RANDOM)
    # the same count of samples inside the MR mask on every level (a shrink of s leaves n_mask / s^3 voxels)
    r.SetMetricSamplingPercentagePerLevel([min(1.0, samples * s ** 3 / n_mask) for s in shrink], 42)
    r.SetMetricUseFixedImageGradientFilter(False)
    r.SetMetricUseMovingImageGradientFilter(False)
    r.SetMetricFixedMask(fmask)
    r.SetInterpolator(sitk.sitkLinear)
    r.SetShrinkFactorsPerLevel(list(shrink)); r.SetSmoothingSigmasPerLevel(list(sigma))
    return r

def rigid(start, samples, shrink, sigma, iterations):
    r = method(samples, shrink, sigma)
    r.SetOptimizerAsRegularStepGradientDescent(2.0, 1e-3, iterations, 0.8)
    r.SetOptimizerScalesFromPhysicalShift()
    r.SetMovingInitialTransform(start)  # a small Euler correction on top of the start (no gimbal lock)
    e = sitk.Euler3DTransform(); e.SetCenter(cf.tolist())
    r.SetInitialTransform(e, inPlace=True)
    r.Execute(f, m)
    return r.GetMetricValue(), sitk.CompositeTransform([start, e])

best = None  # each of the 24 axis-aligned starts about the centres of mass, refined briefly with 20k samples at 4 mm
for perm in itertools.permutations(range(3)):
    for signs in itertools.product((1, -1), repeat=3):
        R = np.zeros((3, 3))
        for row, (col, s) in enumerate(zip(perm, signs)):
            R[row, col] = s
        if np.linalg.det(R) < 0:
            continue
        t = sitk.VersorRigid3DTransform(); t.SetCenter(cf.tolist()); t.SetMatrix(R.ravel().tolist())
        t.SetTranslation((cm - cf).tolist())
        try:
            v, _ = rigid(t, 20000, (2,), (2.0,), 30)
        except RuntimeError:
            continue
        if best is None or v < best[0]:
            best = (v, t)
_, final = rigid(best[1], 50000, (2, 1), (2.0, 0.0), 200)  # the best refined with 50k samples, 4 then 2 mm
sitk.WriteTransform(final, out)
'''


def cases(tmp: Path, only: list[str] | None) -> list[tuple[str, Path, Path]]:
    """(name, case folder, truth folder) for each benchmark case that ../shared allows."""
    made = []
    patients = {name: (src, off) for name, src, off in available_patients()}
    wanted = lambda n: not only or n in only  # noqa: E731
    if wanted("clinical") and (ct := clinical_ct(tmp / "clinical_ct.nii.gz")) is not None:
        make_pseudo_pair(ct, 0, 3, tmp / "clinical" / "case", tmp / "clinical_truth", "--turn", "y",
                         "--max-shift-mm", "30", "--mr-spacing", "0.5", "0.5", "2.5")
        made.append(("clinical", tmp / "clinical", tmp / "clinical_truth"))
    if wanted("tcga0001-turned") and "tcga0001" in patients:
        src, off = patients["tcga0001"]
        make_pseudo_pair(src, off, 3, tmp / "turned" / "case", tmp / "turned_truth", "--turn", "y",
                         "--max-shift-mm", "30")
        made.append(("tcga0001-turned", tmp / "turned", tmp / "turned_truth"))
    for i, name in enumerate(("tcga0001", "tcga0002")):
        if wanted(name) and name in patients:
            src, off = patients[name]
            make_pseudo_pair(src, off, i, tmp / name / "case", tmp / f"{name}_truth")
            made.append((name, tmp / name, tmp / f"{name}_truth"))
    return made


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", nargs="*", help="clinical, tcga0001-turned, tcga0001, tcga0002")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    todo = cases(tmp, a.only)
    if not todo:
        raise SystemExit("no cases: ../shared (real CTs and tools/pseudo_pairs.py) is absent")
    print(f"{os.cpu_count()} CPU cores; each command a fresh process\n")
    print("| case | MR grid | CT grid | plain multi-start s | plain TRE mm | plain GiB | medtrans prepare s "
          "| medtrans TRE mm | medtrans GiB | ratio | start found |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, cohort, truth in todo:
        mr_path, ct_path = cohort / "case" / "mr.nii.gz", cohort / "case" / "ct.nii.gz"
        mask = sitk.ReadImage(str(truth / "mask_on_mr_grid.nii.gz"))
        t_plain, gib_plain, _ = run_measured([sys.executable, "-c", PLAIN_SCRIPT, str(mr_path), str(ct_path),
                                              str(tmp / f"{name}_plain.tfm")])
        plain_tre = tre(sitk.ReadTransform(str(tmp / f"{name}_plain.tfm")), truth_transform(truth), mask).mean()
        t_ours, gib_ours, _ = run_measured([sys.executable, "-m", "medtrans", "prepare", "--input", str(cohort),
                                            "--out", str(tmp / f"{name}_prep"), "--workers", "1"])
        rec = json.loads((tmp / f"{name}_prep" / "case" / "record.json").read_text())
        ours_tre = tre(sitk.ReadTransform(str(tmp / f"{name}_prep" / "case" / "ct_to_mr.tfm")),
                       truth_transform(truth), mask).mean()
        sizes = ["x".join(map(str, _size(p))) for p in (mr_path, ct_path)]
        print(f"| {name} | {sizes[0]} | {sizes[1]} | {t_plain:.1f} | {plain_tre:.2f} | {gib_plain:.2f} | "
              f"{t_ours:.1f} | {ours_tre:.2f} | {gib_ours:.2f} | {t_ours / t_plain:.2f} | "
              f"{rec['qa']['start']['orientation']} |", flush=True)
        print(f"  medtrans stages (s): {json.dumps({k: round(v, 2) for k, v in rec['timings_s'].items()})}; "
              f"registration {json.dumps({k: round(v, 2) for k, v in rec['qa']['registration_seconds'].items()})}; "
              f"check {rec['qa']['registration_disagreement_mm']['mean']:.2f} mm", flush=True)


def _size(path: Path) -> tuple[int, ...]:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return reader.GetSize()


if __name__ == "__main__":
    main()
