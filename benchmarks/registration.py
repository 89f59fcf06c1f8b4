"""Target registration error of medtrans' CT->MR registration on pseudo-pairs and misaligned phantoms.

Pseudo-pairs come from the real CTs in ../shared via ../shared/tools/pseudo_pairs.py (real CT, SIMULATED MR) on a
different grid: misaligned by up to 6 mm / 4 degrees (as in earlier rounds), and turned 180 degrees about x, y or z
with shifts up to 30 mm (subjects lying another way between the scans). The ground truth is its --truth output.
Phantoms come from ``medtrans phantom`` (known transform in phantom_truth.json). TRE is measured over 5,000 body
points of the MR grid. Usage: python benchmarks/registration.py [--no-phantoms] [--no-turns]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import SimpleITK as sitk
from shared_data import available_patients, make_pseudo_pair, tre, truth_transform

from medtrans.config import load_config
from medtrans.data_prep.masks import body_mask
from medtrans.data_prep.registration import register_ct_to_mr
from medtrans.phantom import make_cohort
from medtrans.phantom import truth_transform as phantom_truth

SOURCES = [  # (patient, seeds)
    ("tcga0001", (0, 1)),
    ("tcga0002", (0, 1)),
    ("lung", (0,)),
    ("totalseg", (0,)),
]
TURNED = [("tcga0001", "y", 3), ("tcga0001", "x", 4), ("tcga0002", "z", 5), ("tcga0002", "y", 6),
          ("totalseg", "x", 7), ("totalseg", "z", 8), ("lung", "y", 9)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--no-phantoms", action="store_true")
    ap.add_argument("--no-turns", action="store_true")
    a = ap.parse_args()
    cfg = load_config(None).prepare
    tmp = Path(tempfile.mkdtemp())
    cases = []  # (label, mr, ct, truth transform, mask on the MR grid)
    patients = {name: (src, offset) for name, src, offset in available_patients()}
    if not patients:
        print("no pseudo-pairs: ../shared (real CTs and tools/pseudo_pairs.py) is absent")
    todo = [(name, seed, None) for name, seeds in SOURCES for seed in seeds]
    todo += [] if a.no_turns else [(name, seed, axis) for name, axis, seed in TURNED]
    for name, seed, axis in todo:
        if name not in patients:
            continue
        src, offset = patients[name]
        case, truth = tmp / f"{name}_{seed}_{axis}", tmp / f"truth_{name}_{seed}_{axis}"
        extra = ("--turn", axis, "--max-shift-mm", "30") if axis else ()
        make_pseudo_pair(src, offset, seed, case, truth, *extra)
        label = f"{name}, seed {seed}" + (f", turned about {axis}, up to 30 mm" if axis else "")
        cases.append((label, case / "mr.nii.gz", case / "ct.nii.gz", truth_transform(truth),
                      sitk.ReadImage(str(truth / "mask_on_mr_grid.nii.gz"))))
    if not a.no_phantoms:
        for d in make_cohort(tmp / "phantoms", cases=3, seed=1):
            mr = sitk.ReadImage(str(d / "mr.nii.gz"))
            cases.append((f"phantom {d.name} (synthetic)", d / "mr.nii.gz", d / "ct.nii.gz", phantom_truth(d),
                          body_mask(mr)))
    print("| case | mean TRE mm | max TRE mm | start | s |\n|---|---|---|---|---|")
    for label, mr_path, ct_path, truth, mask in cases:
        mr, ct = sitk.ReadImage(str(mr_path)), sitk.ReadImage(str(ct_path))
        t = time.perf_counter()
        result = register_ct_to_mr(mr, ct, cfg)
        dt = time.perf_counter() - t
        e = tre(result.transform, truth, mask)
        print(f"| {label} | {e.mean():.2f} | {e.max():.2f} | {result.start['orientation']} | {dt:.1f} |", flush=True)


if __name__ == "__main__":
    main()
