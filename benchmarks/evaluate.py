"""``medtrans evaluate`` (the whole command) vs a plain script on one 256x256x200 case, same run.

The plain script is what a researcher would write: read CT, sCT and mask with SimpleITK, compute the three
SynthRAD2023 metrics with the plain NumPy/scikit-image definitions (:mod:`medtrans.evaluation.reference`),
print them. Both run as fresh processes (start-up and imports included), alternating, ``--repeats`` times; the
median wall time and each process's peak resident memory are printed, and the metric values are checked equal.
The metric functions alone are compared too (in this process).

``--clinical`` scores one 512x512x300 case (clinical size) instead.

Usage: python benchmarks/evaluate.py [--quick | --clinical] [--repeats 3]
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from shared_data import run_measured

from medtrans.evaluation import reference as ref
from medtrans.evaluation.metrics import compute_metrics

PLAIN_SCRIPT = """
import sys
import SimpleITK as sitk
from medtrans.evaluation import reference as ref
case = sys.argv[1]
ct, sct, mask = (sitk.GetArrayFromImage(sitk.ReadImage(f"{case}/{n}")).astype("float32")
                 for n in ("ct.nii.gz", "sct.nii.gz", "mask.nii.gz"))
print(ref.mae_2023(ct, sct, mask), ref.psnr_2023(ct, sct, mask), ref.ssim_2023(ct, sct, mask))
"""


def synthetic_case(shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An elliptic 'body' with soft-tissue texture and a bone ring; the sCT is the CT plus noise; an MR-like image."""
    rng = np.random.default_rng(0)
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    r2 = ((x - shape[2] / 2) / (0.4 * shape[2])) ** 2 + ((y - shape[1] / 2) / (0.45 * shape[1])) ** 2
    body = np.broadcast_to(r2 < 1, shape) & (z > 5) & (z < shape[0] - 5)
    ct = np.where(body, 40 + rng.normal(0, 20, shape), -1000)
    ct = np.where(body & np.broadcast_to((r2 > 0.7) & (r2 < 0.85), shape), 900, ct)
    sct = ct + rng.normal(0, 60, shape)
    mr = np.where(body, 300 + 0.3 * (ct - 40) + rng.normal(0, 15, shape), rng.normal(0, 3, shape).clip(0))
    return (ct.astype(np.int16), np.clip(sct, -1024, 3000).astype(np.int16), body.astype(np.uint8),
            mr.astype(np.int16))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="128x128x100 instead of 256x256x200")
    ap.add_argument("--clinical", action="store_true", help="512x512x300 instead of 256x256x200")
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    shape = (300, 512, 512) if a.clinical else (100, 128, 128) if a.quick else (200, 256, 256)
    ct, sct, mask, mr = synthetic_case(shape)

    t = time.perf_counter()
    base = (ref.mae_2023(ct, sct, mask), ref.psnr_2023(ct, sct, mask), ref.ssim_2023(ct, sct, mask))
    t_base = time.perf_counter() - t
    t = time.perf_counter()
    fast = compute_metrics(ct.astype(np.float32), sct.astype(np.float32), mask > 0)
    t_fast = time.perf_counter() - t

    tmp = Path(tempfile.mkdtemp())
    ref_dir, pred_dir = tmp / "ref" / "case", tmp / "pred" / "case"
    ref_dir.mkdir(parents=True)
    pred_dir.mkdir(parents=True)
    for arr, path in ((ct, ref_dir / "ct.nii.gz"), (mask, ref_dir / "mask.nii.gz"), (mr, ref_dir / "mr.nii.gz"),
                      (sct, pred_dir / "sct.nii.gz")):
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing((1.0, 1.0, 1.5))
        sitk.WriteImage(img, str(path), useCompression=True)
    (tmp / "plain").mkdir()
    for name in ("ct.nii.gz", "mask.nii.gz"):
        os.link(ref_dir / name, tmp / "plain" / name)
    os.link(pred_dir / "sct.nii.gz", tmp / "plain" / "sct.nii.gz")

    plain_cmd = [sys.executable, "-c", PLAIN_SCRIPT, str(tmp / "plain")]
    plain, ours, peaks = [], [], {"plain": 0.0, "ours": 0.0}
    for i in range(a.repeats):
        dt, peak, proc = run_measured(plain_cmd)
        out = proc.stdout
        plain.append(dt)
        peaks["plain"] = max(peaks["plain"], peak)
        plain_values = [float(v) for v in out.split()]
        ev_out = tmp / f"eval{i}"
        dt, peak, _ = run_measured([sys.executable, "-m", "medtrans", "evaluate", "--pred", str(tmp / "pred"),
                                    "--ref", str(tmp / "ref"), "--out", str(ev_out)])
        ours.append(dt)
        peaks["ours"] = max(peaks["ours"], peak)
        with open(ev_out / "metrics.csv") as fh:
            row = next(csv.DictReader(fh))
        ours_values = [float(row[k]) for k in ("mae", "psnr", "ssim")]
        diff = max(abs(o - p) / abs(p) for o, p in zip(ours_values, plain_values, strict=True))
        if diff > 1e-6:
            raise SystemExit(f"values differ: medtrans {ours_values} vs plain {plain_values}")

    rel = max(abs(fast[k] - b) / abs(b) for k, b in zip(("mae", "psnr", "ssim"), base, strict=True))
    t_plain, t_ours = statistics.median(plain), statistics.median(ours)
    print(f"volume {shape[::-1]} (x, y, z), {os.cpu_count()} CPUs, median of {a.repeats} alternating runs")
    print(f"metric functions: plain {t_base:.2f} s, medtrans {t_fast:.2f} s ({t_base / t_fast:.2f}x faster; "
          f"max relative difference {rel:.1e})")
    print(f"plain script (read 3 files + plain metrics): {t_plain:.2f} s, peak RSS {peaks['plain']:.2f} GiB")
    print(f"medtrans evaluate (whole command, report):   {t_ours:.2f} s, peak RSS {peaks['ours']:.2f} GiB")
    print(f"ratio medtrans / plain: {t_ours / t_plain:.2f} (values equal to {diff:.0e})")


if __name__ == "__main__":
    main()
