"""Calibration of the pairing check (``qa.pairing_mi_gain``, flag ``pairing_doubtful``): true pairs against pairs
whose CT is another patient's.

For every shared real CT a pseudo-pair is made (simulated MR, misaligned up to 6 mm / 4 degrees); then each MR is
prepared once with its own CT and once with the next patient's CT. Prints the gain of every case, the separation
(the lowest true-pair gain over the highest other-patient gain), and false alarms and misses at the limit
(``MIN_PAIRING_GAIN``). Pseudo-pairs: the CTs are real, the MRs simulated; not real paired data.

    python benchmarks/pairing.py            # about 2-4 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shared_data import available_patients, make_pseudo_pair

from medtrans.config import load_config
from medtrans.data_prep.checks import MIN_PAIRING_GAIN
from medtrans.data_prep.pipeline import prepare_cohort


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=None, help="keep everything here (default: a temp folder)")
    a = ap.parse_args()
    patients = available_patients()
    if len(patients) < 2:
        raise SystemExit("needs ../shared (real CTs and tools/pseudo_pairs.py) beside the checkout")
    out = a.out or Path(tempfile.mkdtemp(prefix="medtrans_pairing_"))
    src, cohort = out / "src", out / "cohort"
    for p, (name, ct, offset) in enumerate(patients):
        if not (src / name / "mr.nii.gz").exists():
            make_pseudo_pair(ct, offset, 300 + p, src / name, out / "truth" / name)
    for p, (name, _, _) in enumerate(patients):
        other = patients[(p + 1) % len(patients)][0]
        for case, ct_of in ((f"{name}__own", name), (f"{name}__ct_of_{other}", other)):
            (cohort / case).mkdir(parents=True, exist_ok=True)
            shutil.copy(src / name / "mr.nii.gz", cohort / case / "mr.nii.gz")
            shutil.copy(src / ct_of / "ct.nii.gz", cohort / case / "ct.nii.gz")
    t = time.perf_counter()
    manifest = prepare_cohort(cohort, out / "prep", load_config(None), progress=False)
    seconds = time.perf_counter() - t
    own, other = [], []
    print(f"{'case':40s} {'gain':>6s}  flags")
    for r in sorted(manifest["cases"], key=lambda r: r["case"]):
        gain = r["qa"].get("pairing_mi_gain")
        (own if r["case"].endswith("__own") else other).append(gain)
        print(f"{r['case']:40s} {gain:6.2f}  {','.join(f['name'] for f in r['qa']['flags']) or '-'}")
    false_alarms = sum(g < MIN_PAIRING_GAIN for g in own)
    misses = sum(g >= MIN_PAIRING_GAIN for g in other)
    print(f"same patient {min(own):.2f}-{max(own):.2f}; other patient {min(other):.2f}-{max(other):.2f}; "
          f"separation (lowest true / highest other) {min(own) / max(other):.2f}x")
    print(f"limit {MIN_PAIRING_GAIN}: false alarms {false_alarms}/{len(own)}, misses {misses}/{len(other)}; "
          f"prepare of {len(own) + len(other)} cases {seconds:.0f} s")
    if manifest["failed"]:
        print("failed:", manifest["failed"])


if __name__ == "__main__":
    main()
