"""Training-step slices/s: medtrans's own training step (both modes) vs a pix2pix reference loop, same device, same run.

medtrans is timed through :class:`medtrans.training.trainer.TrainStep`, the step ``medtrans train`` runs, with the
trainer's own models and optimizers (default config; pix2pix mode with ``train.gan_weight=1``). The reference is the
pix2pix paper's setup written here: unet_256 generator (4x4 convolutions, BatchNorm, 8 down/up levels), 70x70
PatchGAN, batch 1, fp32, Adam, 256x256; on CUDA also batched, bf16, channels_last and compiled (the hand-optimized
reference). The GPU profile (``configs/gpu.yaml``) is timed at its own batch and crop. FLOPs per step are counted
from the trainer's own step (:func:`medtrans.training.trainer.count_step_flops`), so TFLOP/s and the fraction of
the device's bf16 peak are what ``medtrans train`` logs. Random data: the step only.
Usage: python benchmarks/train_throughput.py [--quick] [--device auto] [--compile/--no-compile]
"""

from __future__ import annotations

import argparse
import time

import torch
from monai.losses import PatchAdversarialLoss
from torch import nn

from medtrans.config import load_config
from medtrans.inference import pick_device
from medtrans.models import Discriminator, Generator
from medtrans.training.profiling import bf16_peak_tflops, count_step_flops
from medtrans.training.step import TrainStep, masked_l1, optimizers


def down(i, o, norm=True):
    return nn.Sequential(nn.Conv2d(i, o, 4, 2, 1, bias=not norm), *( [nn.BatchNorm2d(o)] if norm else []),
                         nn.LeakyReLU(0.2))


class RefUNet256(nn.Module):
    def __init__(self):
        super().__init__()
        ch = [64, 128, 256, 512, 512, 512, 512, 512]
        self.downs = nn.ModuleList([down(1 if i == 0 else ch[i - 1], c, norm=0 < i < 7) for i, c in enumerate(ch)])
        self.ups = nn.ModuleList()
        for i in range(7, 0, -1):
            cin = ch[i] if i == 7 else ch[i] * 2
            self.ups.append(nn.Sequential(nn.ConvTranspose2d(cin, ch[i - 1], 4, 2, 1, bias=False),
                                          nn.BatchNorm2d(ch[i - 1]), nn.ReLU()))
        self.last = nn.Sequential(nn.ConvTranspose2d(ch[0] * 2, 1, 4, 2, 1), nn.Tanh())

    def forward(self, x):
        skips = []
        for d in self.downs:
            x = d(x)
            skips.append(x)
        for i, u in enumerate(self.ups):
            x = u(x if i == 0 else torch.cat([x, skips[-1 - i]], 1))
        return self.last(torch.cat([x, skips[0]], 1))


def ref_disc():
    return nn.Sequential(nn.Conv2d(2, 64, 4, 2, 1), nn.LeakyReLU(0.2), down(64, 128), down(128, 256),
                         nn.Conv2d(256, 512, 4, 1, 1, bias=False), nn.BatchNorm2d(512), nn.LeakyReLU(0.2),
                         nn.Conv2d(512, 1, 4, 1, 1))


def step_fn(g, d, og, od, adv, amp, dev):
    def step(mr, ct, mk):
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            fake = g(mr)[:, :1]  # the CT channel (a medtrans generator also predicts its error)
            od.zero_grad(set_to_none=True)
            logits = d(torch.cat([torch.cat([mr[:, :1], ct], 1), torch.cat([mr[:, :1], fake.detach()], 1)])).float()
            r, f = logits.chunk(2)
            (0.5 * (adv(r, True, True) + adv(f, False, True))).backward()
        od.step()
        og.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            loss = 100 * masked_l1(fake.float(), ct, mk) + adv(d(torch.cat([mr[:, :1], fake], 1)).float(), True, False)
        loss.backward()
        og.step()
    return step


def measure(step, batch, k, size, dev, n):
    mr = torch.randn(batch, k, size, size, device=dev)
    ct = torch.rand(batch, 1, size, size, device=dev) * 2 - 1
    mk = torch.ones_like(ct)
    step(mr, ct, mk)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        step(mr, ct, mk)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return n * batch / (time.perf_counter() - t)


def medtrans_step(mode, dev, *, amp: bool, compile_: bool):
    fmt = torch.channels_last if (dev.type == "cuda" and mode.train.channels_last) else torch.contiguous_format
    gm = Generator(mode.model).to(dev, memory_format=fmt)
    dm = Discriminator(mode.model).to(dev, memory_format=fmt) if mode.train.gan_weight > 0 else None
    flops = count_step_flops(mode, gm, dm, dev, amp=amp, fmt=fmt)
    og, od = optimizers(mode, gm, dm, dev)
    sched_g = torch.optim.lr_scheduler.LambdaLR(og, lambda _: 1.0)
    sched_d = torch.optim.lr_scheduler.LambdaLR(od, lambda _: 1.0) if od is not None else None
    g_run, d_run = (torch.compile(gm), torch.compile(dm) if dm is not None else None) if compile_ else (gm, dm)
    return TrainStep(g_run, d_run, og, od, sched_g, sched_d, mode.train, amp=amp, fmt=fmt), flops


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="few steps (CI-friendly on CPU)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch", type=int, default=None, help="medtrans batch (default: train.batch_size, 64 on GPU)")
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                    help="torch.compile the medtrans steps and time a compiled bf16 reference too (default: on CUDA)")
    a = ap.parse_args()
    dev = pick_device(a.device)
    compile_ = dev.type == "cuda" if a.compile is None else a.compile
    cfg = load_config(None)
    n = 2 if a.quick else (10 if dev.type == "cpu" else 50)
    peak = bf16_peak_tflops(dev)
    adv = PatchAdversarialLoss(criterion="least_squares")

    def reference(batch: int, amp: bool, compiled: bool) -> float:
        g, d = RefUNet256().to(dev), ref_disc().to(dev)
        if amp:
            g, d = g.to(memory_format=torch.channels_last), d.to(memory_format=torch.channels_last)
        og = torch.optim.Adam(g.parameters(), 2e-4, betas=(0.5, 0.999), fused=dev.type == "cuda")
        od = torch.optim.Adam(d.parameters(), 2e-4, betas=(0.5, 0.999), fused=dev.type == "cuda")
        g, d = (torch.compile(g), torch.compile(d)) if compiled else (g, d)
        return measure(step_fn(g, d, og, od, adv, amp, dev), batch, 1, 256, dev, n)

    ref = reference(1, False, False)
    batch = a.batch or (64 if dev.type == "cuda" else cfg.train.batch_size)
    amp = dev.type == "cuda" and cfg.train.amp
    ref_fast = reference(batch, amp, True) if compile_ else None
    rows = []
    for label, base, shape in (("default config (U-Net, L1)", None, [f"train.batch_size={batch}", "train.crop_size=256"]),
                               ("pix2pix mode (U-Net + PatchGAN)", "pix2pix",
                                [f"train.batch_size={batch}", "train.crop_size=256"]),
                               ("GPU profile (configs/gpu.yaml), its own batch and crop", "gpu", [])):
        mode = load_config(base, overrides=shape)
        step, flops = medtrans_step(mode, dev, amp=amp, compile_=compile_)
        crops = measure(step, mode.train.batch_size, mode.model.context_slices, mode.train.crop_size, dev, n)
        tflops = flops / mode.train.batch_size * crops / 1e12
        rows.append((label, mode.train.batch_size, mode.train.crop_size, crops, flops, tflops))
    print(f"device {dev} ({torch.cuda.get_device_name(dev) if dev.type == 'cuda' else f'{torch.get_num_threads()} threads'});"
          f" {n} timed steps each; bf16 peak {peak or 'unknown'} TFLOP/s; compile {compile_}")
    print(f"reference pix2pix (unet_256 + PatchGAN, batch 1, fp32): {ref:.1f} slices/s")
    if ref_fast is not None:
        print(f"reference pix2pix, batch {batch}, bf16 + channels_last + torch.compile: {ref_fast:.1f} slices/s")
    for label, b, crop, crops, flops, tflops in rows:
        ratio = f" -> {crops / ref:.2f}x the reference" + (f", {crops / ref_fast:.2f}x the compiled reference"
                                                         if ref_fast and crop == 256 else "")
        mfu = f", {tflops / peak:.1%} of bf16 peak" if peak else ""
        print(f"medtrans {label}, batch {b}, {crop}^2{', bf16 + channels_last' if amp else ''}: {crops:.1f} "
              f"crops/s{ratio if crop == 256 else ''}; {flops / 1e9:.1f} GFLOP/step (counted from TrainStep), "
              f"{tflops:.3f} TFLOP/s{mfu}")


if __name__ == "__main__":
    main()
