"""End-to-end convert of one MR (read -> sCT written) vs a naive per-slice fp32 batch-1 loop, same run.

The MR is head-like (a textured ellipse in a wider field of view, noise outside). Prints where convert's time goes (the stage timings it records in ``sct.json``: decode, normalize, input checks,
to the model grid, network, back to the MR grid, encode) and the whole ``medtrans convert`` command as a fresh
process (start-up, imports and model load included). Weights are random (speed does not depend on them).

``--clinical`` converts a 512x512x300 MR at 0.5x0.5x1.0 mm with a bundle whose working spacing is 1 mm (what prepare
chooses for such a cohort: the 1 mm floor) and reports the whole command's peak resident memory.

``--uncertainty`` also runs ``medtrans convert --uncertainty`` as a fresh process on the same case (two passes, the
error map written) and prints its wall time and peak memory as a ratio to the plain command's.

Usage: python benchmarks/convert.py [--quick | --clinical] [--uncertainty] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from shared_data import run_measured

from medtrans.bundle import load_bundle, save_bundle
from medtrans.config import load_config
from medtrans.convert import convert_cohort
from medtrans.geometry import working_grid
from medtrans.inference import pick_device
from medtrans.intensity import MRNormalization, denormalize_ct, normalize_mr
from medtrans.models import Generator


def head_like(shape: tuple[int, int, int]) -> np.ndarray:
    """An MR-like volume: a textured ellipse filling 70 % x 86 % of the field of view (a head in a 256 mm field),
    Rician-like noise outside (weights are random, so what matters for speed is the body's share of the slice)."""
    rng = np.random.default_rng(0)
    y, x = np.ogrid[: shape[1], : shape[2]]
    body = ((x - shape[2] / 2) / (0.35 * shape[2])) ** 2 + ((y - shape[1] / 2) / (0.43 * shape[1])) ** 2 < 1
    inside = 400 + rng.normal(0, 80, shape).astype(np.float32)
    outside = np.abs(rng.normal(0, 8, shape)).astype(np.float32)
    return np.where(np.broadcast_to(body, shape), inside, outside).astype(np.int16)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="256x256x40 instead of 256x256x200")
    ap.add_argument("--clinical", action="store_true", help="512x512x300 at 0.5x0.5x1 mm, model at 1 mm")
    ap.add_argument("--uncertainty", action="store_true", help="also time convert --uncertainty (fresh process)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--config", default=None, help="model config (default: the default config)")
    a = ap.parse_args()
    cfg = load_config(a.config)
    dev = pick_device(a.device)
    torch.manual_seed(0)
    tmp = Path(tempfile.mkdtemp())
    save_bundle(tmp / "bundle", model=cfg.model, mr_normalization=MRNormalization(),
                state_dict=Generator(cfg.model).state_dict(), info={}, spacing=[1.0, 1.0] if a.clinical else None)
    size = (512, 512, 300) if a.clinical else (256, 256, 40 if a.quick else 200)
    mr = sitk.GetImageFromArray(head_like(size[::-1]))
    mr.SetSpacing((0.5, 0.5, 1.0) if a.clinical else (1.0, 1.0, 1.5))
    (tmp / "in" / "case").mkdir(parents=True)
    sitk.WriteImage(mr, str(tmp / "in" / "case" / "mr.nii.gz"))

    convert_cohort(tmp / "bundle", tmp / "in", tmp / "warm", device=str(dev), progress=False)  # warm-up
    t = time.perf_counter()
    convert_cohort(tmp / "bundle", tmp / "in", tmp / "out", device=str(dev), progress=False)
    t_ours = time.perf_counter() - t
    stages = json.loads((tmp / "out" / "case" / "sct.json").read_text())["timings_s"]
    t_cli, gib_cli, _ = run_measured([sys.executable, "-m", "medtrans", "convert", "--model", str(tmp / "bundle"),
                                      "--input", str(tmp / "in"), "--out", str(tmp / "cli"), "--device", str(dev)])
    cli_case = json.loads((tmp / "cli" / "case" / "sct.json").read_text())["timings_s"]["total"]

    t = time.perf_counter()  # naive: same model, slice by slice, fp32, batch 1, no 2.5D gather on device
    vol = sitk.ReadImage(str(tmp / "in" / "case" / "mr.nii.gz"))
    norm, _ = normalize_mr(vol, MRNormalization())
    work = working_grid(norm, [1.0, 1.0]) if a.clinical else None
    norm = sitk.Resample(norm, work, sitk.Transform(), sitk.sitkLinear, -1.0) if work is not None else norm
    arr = sitk.GetArrayFromImage(norm)
    g = load_bundle(tmp / "bundle").generator().to(dev)
    k = cfg.model.context_slices
    out = np.empty_like(arr)
    with torch.no_grad():
        for zi in range(arr.shape[0]):
            idx = np.clip(np.arange(zi - k // 2, zi + k // 2 + 1), 0, arr.shape[0] - 1)
            x = torch.from_numpy(arr[idx][None]).float().to(dev)
            out[zi] = g(x)[0, 0].cpu().numpy()
    img = sitk.GetImageFromArray(denormalize_ct(out))
    img.CopyInformation(norm)
    img = sitk.Resample(img, vol, sitk.Transform(), sitk.sitkLinear, -1024.0) if work is not None else img
    sitk.WriteImage(img, str(tmp / "naive.nii.gz"))
    t_naive = time.perf_counter() - t
    print(f"volume {size} on {dev} ({torch.get_num_threads()} threads), model channels {cfg.model.channels}")
    print(f"naive per-slice fp32 batch 1: {t_naive:.2f} s")
    print(f"medtrans convert:             {t_ours:.2f} s (in process, after one warm-up volume)")
    print(f"speed-up: {t_naive / t_ours:.2f}x")
    print("where convert's time goes: " + ", ".join(f"{k} {v:.3f} s" for k, v in stages.items()))
    print(f"`medtrans convert` as a fresh process: {t_cli:.2f} s wall, of which the case {cli_case:.2f} s; "
          f"start-up, imports, model load and first-call warm-up {t_cli - cli_case:.2f} s; peak RSS {gib_cli:.2f} GiB")

    if a.uncertainty:
        t_unc, gib_unc, _ = run_measured([sys.executable, "-m", "medtrans", "convert", "--model", str(tmp / "bundle"),
                                          "--input", str(tmp / "in"), "--out", str(tmp / "unc"), "--device",
                                          str(dev), "--uncertainty"])
        print(f"`medtrans convert --uncertainty` as a fresh process: {t_unc:.2f} s wall ({t_unc / t_cli:.2f}x the "
              f"plain command), peak RSS {gib_unc:.2f} GiB ({gib_unc / gib_cli:.2f}x)")


if __name__ == "__main__":
    main()
