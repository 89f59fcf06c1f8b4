"""What the benchmarks share: the ../shared real CTs and how pseudo-pairs are made from them.

Pseudo-pairs come from ``../shared/tools/pseudo_pairs.py``: the CT is real, the MR is SIMULATED from it
(T1-like, non-invertible: air and cortical bone both dark), on its own grid and misaligned (by default up to
6 mm / 4 degrees; ``extra`` arguments turn the subject 180 degrees, shift it further or set the MR's spacing);
``--truth`` holds the transform, the CT on the MR grid and the body mask. Figures from them are never results on
real paired data.

The clinical-size CT is the shared GE head CT (a real patient: 512x512 at 0.49 mm, gantry tilt 18.5 degrees, read
and tilt-corrected by medtrans), its slices resampled from 4 mm to 0.625 mm so that the volume has a clinical slice
count (512x611x237): the in-plane detail is the scanner's, the through-plane detail is interpolated.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

#: ../shared beside the checkout; MEDTRANS_SHARED points elsewhere (e.g. a copy carried to a GPU machine)
SHARED = Path(os.environ.get("MEDTRANS_SHARED") or Path(__file__).resolve().parents[2] / "shared")
PSEUDO_PAIRS = SHARED / "tools" / "pseudo_pairs.py"

#: (patient label, CT path under shared/data, offset from stored values to HU)
PATIENTS = [
    ("tcga0001", "tcga_hnsc_ct_downsampled/0001.nii.gz", 1024),
    ("tcga0002", "tcga_hnsc_ct_downsampled/0002.nii.gz", 1024),
    ("lung", "elastix_lung_ct/3DCT_lung_baseline_small.mha", 0),
    ("totalseg", "totalsegmentator_examples/example_ct_sm.nii.gz", 0),
]
CLINICAL_DICOM = "dcm_qa_ct/GE_head_tilt"
CLINICAL_SLICE_MM = 0.625


def available_patients() -> list[tuple[str, Path, int]]:
    """The patients whose CT (and the pseudo-pair tool) are present beside this checkout."""
    if not PSEUDO_PAIRS.exists():
        return []
    return [(name, SHARED / "data" / rel, off) for name, rel, off in PATIENTS if (SHARED / "data" / rel).exists()]


def make_pseudo_pair(ct: Path, hu_offset: int, seed: int, case_dir: Path, truth_dir: Path, *extra: str) -> None:
    """One misaligned pseudo-paired case: ``case_dir/{mr,ct}.nii.gz`` and its ground truth in ``truth_dir``."""
    subprocess.run([sys.executable, str(PSEUDO_PAIRS), "--ct", str(ct), "--hu-offset", str(hu_offset),
                    "--seed", str(seed), "--out", str(case_dir), "--truth", str(truth_dir), *extra], check=True)


def pseudo_cohort(cohort: Path, truth: Path, sims: int) -> list[str]:
    """``sims`` simulated MRs per available patient (seed 100 x patient + sim): ``cohort/<patient>_sim<s>/`` and their
    truth; cases already made are kept. Returns the patients' labels."""
    patients = available_patients()
    for p, (name, ct, offset) in enumerate(patients):
        for s in range(sims):
            case = f"{name}_sim{s}"
            if not (cohort / case / "mr.nii.gz").exists():
                make_pseudo_pair(ct, offset, 100 * p + s, cohort / case, truth / case)
    return [p[0] for p in patients]


def clinical_ct(out: Path) -> Path | None:
    """The clinical-size CT (see the module docstring) written to ``out``; None when ../shared is absent."""
    src = SHARED / "data" / CLINICAL_DICOM
    if not src.exists() or not PSEUDO_PAIRS.exists():
        return None
    from medtrans.io import read_volume

    ct = read_volume(src).image  # tilt-corrected onto a rectilinear grid
    spacing = (*ct.GetSpacing()[:2], CLINICAL_SLICE_MM)
    size = [*ct.GetSize()[:2], round(ct.GetSize()[2] * ct.GetSpacing()[2] / CLINICAL_SLICE_MM)]
    d = np.array(ct.GetDirection()).reshape(3, 3)
    corner = np.array(ct.GetOrigin()) - d @ (np.array(ct.GetSpacing()) / 2)
    grid = sitk.Image(size, sitk.sitkInt16)
    grid.SetSpacing(spacing)
    grid.SetDirection(ct.GetDirection())
    grid.SetOrigin(tuple(corner + d @ (np.array(spacing) / 2)))
    out.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.Resample(ct, grid, sitk.Transform(), sitk.sitkLinear, -1024.0, sitk.sitkInt16), str(out))
    return out


def truth_transform(truth_dir: Path) -> sitk.Euler3DTransform:
    """The MR->CT rigid transform a pseudo-pair was made with."""
    rec = json.loads((truth_dir / "truth.json").read_text())["transform"]
    t = sitk.Euler3DTransform()
    t.SetCenter(rec["center"])
    t.SetParameters(rec["parameters"])
    return t


def tre(estimated: sitk.Transform, truth: sitk.Transform, mask: sitk.Image, *, points: int = 5000) -> np.ndarray:
    """Distances (mm) between where the two transforms put body points of the MR grid (a seeded sample)."""
    idx = np.argwhere(sitk.GetArrayViewFromImage(mask) > 0)
    idx = idx[np.random.default_rng(0).choice(len(idx), size=min(points, len(idx)), replace=False)]
    pts = [mask.TransformIndexToPhysicalPoint([int(i) for i in p[::-1]]) for p in idx]
    return np.array([np.linalg.norm(np.subtract(estimated.TransformPoint(p), truth.TransformPoint(p))) for p in pts])


def run_measured(cmd: list[str], **kwargs) -> tuple[float, float, subprocess.CompletedProcess]:
    """Run ``cmd`` as a fresh process: wall seconds, its peak resident memory in GiB (GNU time's %M), the result."""
    import tempfile
    import time

    with tempfile.TemporaryDirectory() as d:
        rss = Path(d) / "rss"
        t = time.perf_counter()
        p = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", str(rss), *cmd], capture_output=True, text=True,
                           **kwargs)
        dt = time.perf_counter() - t
        if p.returncode:
            raise SystemExit(f"{' '.join(cmd[:5])} failed ({p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
        return dt, int(rss.read_text().split()[-1]) / 2**20, p
