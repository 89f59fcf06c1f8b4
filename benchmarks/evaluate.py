"""SynthRAD2023 metrics on a 256x256x200 pair: medtrans vs the plain NumPy/scikit-image definitions, same run.

Usage: python benchmarks/evaluate.py [--quick]
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np

from medtrans.evaluation import reference as ref
from medtrans.evaluation.metrics import compute_metrics


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="128x128x100 instead of 256x256x200")
    a = ap.parse_args()
    shape = (100, 128, 128) if a.quick else (200, 256, 256)
    rng = np.random.default_rng(0)
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    body = ((x - shape[2] / 2) / (0.4 * shape[2])) ** 2 + ((y - shape[1] / 2) / (0.45 * shape[1])) ** 2 < 1
    body = np.broadcast_to(body, shape) & (z > 5) & (z < shape[0] - 5)
    ct = np.where(body, rng.normal(40, 300, shape), -1000).astype(np.float32)
    sct = (ct + rng.normal(0, 80, shape)).astype(np.float32)
    mask = body.astype(np.uint8)

    def run(fn):
        tracemalloc.start()
        t = time.perf_counter()
        out = fn()
        dt = time.perf_counter() - t
        peak = tracemalloc.get_traced_memory()[1] / 2**30
        tracemalloc.stop()
        return out, dt, peak

    base, t_base, m_base = run(lambda: (ref.mae_2023(ct, sct, mask), ref.psnr_2023(ct, sct, mask),
                                        ref.ssim_2023(ct, sct, mask)))
    fast, t_fast, m_fast = run(lambda: compute_metrics(ct, sct, mask))
    rel = max(abs(fast[k] - b) / abs(b) for k, b in zip(("mae", "psnr", "ssim"), base, strict=True))
    print(f"volume {shape[::-1]} (x, y, z)")
    print(f"reference (numpy/skimage): {t_base:.2f} s, peak {m_base:.2f} GiB (python allocations)")
    print(f"medtrans compute_metrics:  {t_fast:.2f} s, peak {m_fast:.2f} GiB")
    print(f"speed-up: {t_base / t_fast:.2f}x; max relative difference {rel:.1e}")


if __name__ == "__main__":
    main()
