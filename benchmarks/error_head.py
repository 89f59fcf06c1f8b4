"""What the error output costs in training: the trainer's own ``TrainStep`` with ``model.predict_error`` off (the
baseline) and on, same config, same batch, same run; seconds per step and the ratio.

Usage: python benchmarks/error_head.py [--config demo] [--steps 20] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import torch

from medtrans.config import load_config
from medtrans.models import Generator
from medtrans.training.step import TrainStep, optimizers


def seconds_per_step(config: str, predict_error: bool, steps: int) -> float:
    cfg = load_config(config, overrides=[f"model.predict_error={str(predict_error).lower()}"])
    torch.manual_seed(0)
    g = Generator(cfg.model)
    opt, _ = optimizers(cfg, g, None, torch.device("cpu"))
    step = TrainStep(g, None, opt, None, torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0), None, cfg.train,
                     amp=False, fmt=torch.contiguous_format)
    b, c, k = cfg.train.batch_size, cfg.train.crop_size, cfg.model.context_slices
    mr, ct, mask = torch.randn(b, k, c, c), torch.rand(b, 1, c, c) * 2 - 1, torch.ones(b, 1, c, c)
    for _ in range(3):  # warm-up
        step(mr, ct, mask)
    t = time.perf_counter()
    for _ in range(steps):
        step(mr, ct, mask)
    return (time.perf_counter() - t) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="demo")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    without = seconds_per_step(a.config, False, a.steps)
    with_head = seconds_per_step(a.config, True, a.steps)
    print(f"config {a.config}, {a.threads} CPU threads: {without:.3f} s/step without the error output, "
          f"{with_head:.3f} s/step with it -> {with_head / without:.2f}x")


if __name__ == "__main__":
    main()
