"""How fast training runs: the FLOPs of the trainer's own step, counted once, and the card's bf16 peak, so that the
log can say TFLOP/s and the fraction of the peak reached (MFU)."""

from __future__ import annotations

import copy
import os
import platform
from typing import Any

import torch

import medtrans
from medtrans.config import Config
from medtrans.intensity import CT_BACKGROUND
from medtrans.modes import mode_of
from medtrans.training.step import TrainStep, optimizers

#: Dense bf16 tensor-core peak (TFLOP/s) by CUDA device name, for the trainer's utilisation figure (vendor data
#: sheets; first match wins). ``MEDTRANS_PEAK_TFLOPS`` overrides it for any other device.
BF16_PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H200", 989.5), ("H100 PCIe", 756.0), ("H100 NVL", 835.5), ("H100", 989.5), ("GH200", 989.5),
    ("A100", 312.0), ("L40S", 362.1), ("L4", 121.0), ("A10", 125.0), ("RTX 4090", 165.2), ("RTX 6000 Ada", 364.2))


def bf16_peak_tflops(device: torch.device) -> float | None:
    """The device's dense bf16 peak in TFLOP/s (None where unknown, e.g. a CPU, unless MEDTRANS_PEAK_TFLOPS is set).

    Example:
        >>> bf16_peak_tflops(torch.device("cpu")) is None or "MEDTRANS_PEAK_TFLOPS" in os.environ
        True
    """
    if os.environ.get("MEDTRANS_PEAK_TFLOPS"):
        return float(os.environ["MEDTRANS_PEAK_TFLOPS"])
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in BF16_PEAK_TFLOPS if key in name), None)


def count_step_flops(cfg: Config, generator: torch.nn.Module, discriminator: torch.nn.Module | None,
                     dev: torch.device, *, amp: bool, fmt: torch.memory_format) -> int:
    """FLOPs of one :class:`TrainStep` at the config's batch and crop size (forward and backward of every network
    it runs), counted by PyTorch's ``FlopCounterMode`` while the trainer's own step runs once on copies of the
    networks (the run's weights, optimizers and random streams are untouched). The copy runs one sample and the
    count is scaled by the batch size: every operation the counter counts (convolutions, matrix products) is
    linear in the batch.
    """
    from torch.utils.flop_counter import FlopCounterMode

    g = copy.deepcopy(generator)
    d = copy.deepcopy(discriminator) if discriminator is not None else None
    opt_g, opt_d = optimizers(cfg, g, d, dev)
    constant = lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0) if opt is not None else None  # noqa: E731
    step = TrainStep(g, d, opt_g, opt_d, constant(opt_g), constant(opt_d), cfg.train, amp=amp, fmt=fmt)
    shape = mode_of(cfg.model).sample_shape(cfg.model, cfg.train.crop_size)
    target = (1, 1, *shape[1:])
    mr = torch.zeros(1, *shape, device=dev)
    ct, mask = torch.full(target, CT_BACKGROUND, device=dev), torch.ones(target, device=dev)
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []), \
            FlopCounterMode(display=False) as counter:
        step(mr, ct, mask)
    return int(counter.get_total_flops()) * cfg.train.batch_size


def environment(device: torch.device, world: int) -> dict[str, Any]:
    import monai

    env = {"medtrans": medtrans.__version__, "torch": torch.__version__, "monai": monai.__version__,
           "python": platform.python_version(), "platform": platform.platform(), "device": str(device),
           "world_size": world, "cpu_threads": torch.get_num_threads()}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env
