"""medtrans's ``synthrad2025`` metrics against the challenge's own evaluation code, run side by side.

The official code (SynthRAD2025/evaluation ``image_metrics.py``, MIT) is not part of medtrans; pass its path:

    git clone https://github.com/SynthRAD2025/evaluation /tmp/sr25
    python benchmarks/official_metrics.py --official /tmp/sr25/image_metrics.py

Prints, per volume pair (random volumes of several sizes, and the shared real CTs with noise, scaling and a 2-voxel
shift), both MS-SSIM values and the absolute differences of MAE, PSNR and MS-SSIM, for float64 inputs and for an
int16 CT with a float32 sCT (as files are usually stored), and the time of each.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shared_data import SHARED

from medtrans.metrics import compute_metrics


def cases(rng: np.random.Generator):
    for shape in [(40, 50, 45), (120, 130, 101), (60, 100, 97), (33, 200, 150)]:
        gt = rng.normal(0, 600, shape)
        gt[:, :5] = -1000
        pred = gt + rng.normal(30, 150, shape)
        pred[0, 0, 0], pred[1, 1, 1] = 5000, -3000
        mask = np.zeros(shape, np.uint8)
        mask[2:-2, 8:-3, 1:-1] = 1
        yield f"random {shape}", gt, pred, mask
    for rel, offset in (("totalsegmentator_examples/example_ct_sm.nii.gz", 0),
                        ("tcga_hnsc_ct_downsampled/0001.nii.gz", 1024)):
        path = SHARED / "data" / rel
        if not path.exists():
            continue
        ct = sitk.GetArrayFromImage(sitk.ReadImage(str(path))).astype(np.float64) - offset
        mask = (ct > -400).astype(np.uint8)
        for label, pert in (("noise", ct + rng.normal(0, 50, ct.shape)), ("scaled", ct * 1.05 + 20),
                            ("shifted 2 voxels", np.roll(ct, 2, axis=1))):
            yield f"{rel.split('/')[0]} {ct.shape} {label}", ct, pert, mask


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--official", type=Path, required=True, help="path of the official image_metrics.py")
    a = ap.parse_args()
    spec = importlib.util.spec_from_file_location("official_image_metrics", a.official)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    official = module.ImageMetrics()
    worst = {"float64": dict.fromkeys(("mae", "psnr", "ms_ssim"), 0.0),
             "int16/float32": dict.fromkeys(("mae", "psnr", "ms_ssim"), 0.0)}
    for label, gt, pred, mask in cases(np.random.default_rng(0)):
        for kind, g, p in (("float64", gt, pred), ("int16/float32", np.round(gt).astype(np.int16),
                                                     pred.astype(np.float32))):
            t = time.perf_counter()
            o = official.score_patient(g, p, mask)
            t_official = time.perf_counter() - t
            t = time.perf_counter()
            m = compute_metrics(g, p, mask, protocol="synthrad2025")
            t_ours = time.perf_counter() - t
            d = {k: abs(m[k] - o[k]) for k in worst[kind]}
            worst[kind] = {k: max(worst[kind][k], d[k]) for k in d}
            print(f"{label:52s} {kind:13s} ms_ssim {m['ms_ssim']:.9f} (official {o['ms_ssim']:.9f})  |diff| mae "
                  f"{d['mae']:.1e} psnr {d['psnr']:.1e} ms_ssim {d['ms_ssim']:.1e}  {t_ours:.2f} s vs {t_official:.2f} s")
    for kind, w in worst.items():
        print(f"largest |difference|, {kind} inputs: " + ", ".join(f"{k} {v:.1e}" for k, v in w.items()))


if __name__ == "__main__":
    main()
