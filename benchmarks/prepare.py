"""Seconds per case of medtrans prepare vs plain SimpleITK rigid MI registration alone, same run.

Cases: pseudo-pairs from ../shared real CTs when present (simulated MR, misaligned), else phantoms.
Usage: python benchmarks/prepare.py
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import SimpleITK as sitk
from shared_data import available_patients, make_pseudo_pair

from medtrans.config import load_config
from medtrans.data_prep.pipeline import prepare_cohort
from medtrans.phantom import make_cohort


def plain_rigid(mr: sitk.Image, ct: sitk.Image) -> None:
    fixed, moving = sitk.Cast(mr, sitk.sitkFloat32), sitk.Cast(ct, sitk.sitkFloat32)
    init = sitk.CenteredTransformInitializer(fixed, moving, sitk.Euler3DTransform(),
                                             sitk.CenteredTransformInitializerFilter.GEOMETRY)
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(50)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(0.2, 1)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsGradientDescent(1.0, 200, 1e-6, 10)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([4, 2, 1])
    reg.SetSmoothingSigmasPerLevel([2, 1, 0])
    reg.SetInitialTransform(init, inPlace=False)
    reg.Execute(fixed, moving)


def main() -> None:
    tmp = Path(tempfile.mkdtemp())
    cohort = tmp / "cohort"
    patients = [p for p in available_patients() if p[0].startswith("tcga")]
    if patients:
        for i, (name, ct, offset) in enumerate(patients):
            make_pseudo_pair(ct, offset, i, cohort / name, tmp / "truth" / name)
        kind = "pseudo-pairs (real CT, simulated MR) from ../shared"
    else:
        make_cohort(cohort, cases=3, seed=0)
        kind = "synthetic phantoms"
    cases = sorted(d for d in cohort.iterdir() if d.is_dir())
    t = time.perf_counter()
    for d in cases:
        plain_rigid(sitk.ReadImage(str(d / "mr.nii.gz")), sitk.ReadImage(str(d / "ct.nii.gz")))
    t_plain = (time.perf_counter() - t) / len(cases)
    t = time.perf_counter()
    prepare_cohort(cohort, tmp / "prep", load_config(None), progress=False)
    t_ours = (time.perf_counter() - t) / len(cases)
    t = time.perf_counter()
    prepare_cohort(cohort, tmp / "prep_workers", load_config(None), workers=0, progress=False)
    t_workers = (time.perf_counter() - t) / len(cases)
    size = sitk.ReadImage(str(cases[0] / "mr.nii.gz")).GetSize()
    print(f"{len(cases)} cases, {kind}; first MR grid {size}; {os.cpu_count()} CPU cores")
    print(f"plain SimpleITK rigid MI registration only (all threads): {t_plain:.2f} s/case")
    print(f"medtrans prepare, 1 worker (register single-threaded for reproducibility, resample, mask, normalize, "
          f"slices, write): {t_ours:.2f} s/case")
    print(f"medtrans prepare, --workers 0 (one per core): {t_workers:.2f} s/case")
    print(f"ratio (prepare 1 worker / plain registration): {t_ours / t_plain:.2f}; "
          f"(prepare --workers 0 / plain registration): {t_workers / t_plain:.2f}")


if __name__ == "__main__":
    main()
