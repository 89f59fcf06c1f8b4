"""Target registration error of medtrans' CT->MR registration on pseudo-pairs and misaligned phantoms.

Pseudo-pairs come from the real CTs in ../shared via ../shared/tools/pseudo_pairs.py (real CT, simulated MR,
random rigid misalignment up to 6 mm / 4 degrees on a different grid); the ground truth is its --truth output.
Phantoms come from ``medtrans phantom`` (known transform in phantom_truth.json). TRE is measured over every
37th body voxel of the MR grid. Usage: python benchmarks/registration.py [--no-phantoms]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from shared_data import available_patients, make_pseudo_pair

from medtrans.config import load_config
from medtrans.data_prep.masks import body_mask
from medtrans.data_prep.registration import register_ct_to_mr
from medtrans.phantom import make_cohort, truth_transform

SOURCES = [  # (patient, seeds)
    ("tcga0001", (0, 1)),
    ("tcga0002", (0, 1)),
    ("lung", (0,)),
    ("totalseg", (0,)),
]


def tre(estimated: sitk.Transform, truth: sitk.Transform, mask: sitk.Image) -> np.ndarray:
    idx = np.argwhere(sitk.GetArrayFromImage(mask) > 0)[::37]
    pts = [mask.TransformIndexToPhysicalPoint([int(i) for i in p[::-1]]) for p in idx]
    return np.array([np.linalg.norm(np.subtract(estimated.TransformPoint(p), truth.TransformPoint(p))) for p in pts])


def euler_from(rec: dict) -> sitk.Euler3DTransform:
    t = sitk.Euler3DTransform()
    t.SetCenter(rec["center"])
    t.SetParameters(rec["parameters"])
    return t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--no-phantoms", action="store_true")
    a = ap.parse_args()
    cfg = load_config(None).prepare
    tmp = Path(tempfile.mkdtemp())
    cases = []  # (label, mr, ct, truth transform, mask on the MR grid)
    patients = {name: (src, offset) for name, src, offset in available_patients()}
    if not patients:
        print("no pseudo-pairs: ../shared (real CTs and tools/pseudo_pairs.py) is absent")
    for name, seeds in SOURCES:
        if name not in patients:
            continue
        src, offset = patients[name]
        for seed in seeds:
            case, truth = tmp / f"{name}_{seed}", tmp / f"truth_{name}_{seed}"
            make_pseudo_pair(src, offset, seed, case, truth)
            cases.append((f"{name}, seed {seed}", case / "mr.nii.gz", case / "ct.nii.gz",
                          euler_from(json.loads((truth / "truth.json").read_text())["transform"]),
                          sitk.ReadImage(str(truth / "mask_on_mr_grid.nii.gz"))))
    if not a.no_phantoms:
        for d in make_cohort(tmp / "phantoms", cases=3, seed=1):
            mr = sitk.ReadImage(str(d / "mr.nii.gz"))
            cases.append((f"phantom {d.name} (synthetic)", d / "mr.nii.gz", d / "ct.nii.gz", truth_transform(d),
                          body_mask(mr)))
    print("| case | mean TRE mm | max TRE mm | s |\n|---|---|---|---|")
    for label, mr_path, ct_path, truth, mask in cases:
        mr, ct = sitk.ReadImage(str(mr_path)), sitk.ReadImage(str(ct_path))
        t = time.perf_counter()
        result = register_ct_to_mr(mr, ct, cfg)
        dt = time.perf_counter() - t
        e = tre(result.transform, truth, mask)
        print(f"| {label} | {e.mean():.2f} | {e.max():.2f} | {dt:.1f} |")


if __name__ == "__main__":
    main()
