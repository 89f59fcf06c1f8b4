"""Seconds per case of medtrans prepare vs plain SimpleITK rigid MI registration alone, same run.

Cases: pseudo-pairs from ../shared real CTs when present (simulated MR, misaligned), else phantoms.
Usage: python benchmarks/prepare.py
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import SimpleITK as sitk

from data_prep.pipeline import prepare_cohort
from medtrans.config import load_config
from medtrans.phantom import make_cohort

SHARED = Path(__file__).resolve().parents[2] / "shared"


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
    tool = SHARED / "tools" / "pseudo_pairs.py"
    cts = sorted((SHARED / "data" / "tcga_hnsc_ct_downsampled").glob("*.nii.gz"))
    if tool.exists() and cts:
        for i, ct in enumerate(cts):
            subprocess.run([sys.executable, str(tool), "--ct", str(ct), "--hu-offset", "1024", "--seed", str(i),
                            "--out", str(cohort / f"pp{i}"), "--truth", str(tmp / "truth" / f"pp{i}")], check=True)
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
    size = sitk.ReadImage(str(cases[0] / "mr.nii.gz")).GetSize()
    print(f"{len(cases)} cases, {kind}; first MR grid {size}")
    print(f"plain SimpleITK rigid MI registration only: {t_plain:.2f} s/case")
    print(f"medtrans prepare (register, resample, mask, normalize, slices, write): {t_ours:.2f} s/case")
    print(f"ratio (prepare / plain registration): {t_ours / t_plain:.2f}")


if __name__ == "__main__":
    main()
