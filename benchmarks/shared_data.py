"""What the benchmarks share: the ../shared real CTs and how pseudo-pairs are made from them.

Pseudo-pairs come from ``../shared/tools/pseudo_pairs.py``: the CT is real, the MR is SIMULATED from it
(T1-like, non-invertible: air and cortical bone both dark), on its own grid and misaligned by up to
6 mm / 4 degrees; ``--truth`` holds the transform, the CT on the MR grid and the body mask. Figures from
them are never results on real paired data.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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


def available_patients() -> list[tuple[str, Path, int]]:
    """The patients whose CT (and the pseudo-pair tool) are present beside this checkout."""
    if not PSEUDO_PAIRS.exists():
        return []
    return [(name, SHARED / "data" / rel, off) for name, rel, off in PATIENTS if (SHARED / "data" / rel).exists()]


def make_pseudo_pair(ct: Path, hu_offset: int, seed: int, case_dir: Path, truth_dir: Path) -> None:
    """One misaligned pseudo-paired case: ``case_dir/{mr,ct}.nii.gz`` and its ground truth in ``truth_dir``."""
    subprocess.run([sys.executable, str(PSEUDO_PAIRS), "--ct", str(ct), "--hu-offset", str(hu_offset),
                    "--seed", str(seed), "--out", str(case_dir), "--truth", str(truth_dir)], check=True)
