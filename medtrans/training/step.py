"""One optimization step of the trainer (what ``medtrans train`` runs and ``benchmarks/train_throughput.py`` times):
the masked L1 term, the optional PatchGAN term, and the optimizers."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from monai.losses import PatchAdversarialLoss

from medtrans.config import Config

#: Masked L1 weights the body 1 and the rest this much: the background is still kept near air.
OUTSIDE_MASK_WEIGHT = 0.1
#: Learning rate of the error output's head relative to the rest of the generator.
ERROR_HEAD_LR_FACTOR = 10.0


def masked_l1(fake: torch.Tensor, real: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean absolute error, weighted 1 inside the body and :data:`OUTSIDE_MASK_WEIGHT` outside it."""
    diff = (fake - real).abs()
    if mask is None:
        return diff.mean()
    w = mask + OUTSIDE_MASK_WEIGHT * (1 - mask)
    return (diff * w).sum() / w.sum()


def laplace_nll(log_scale: torch.Tensor, fake: torch.Tensor, real: torch.Tensor,
                mask: torch.Tensor | None) -> torch.Tensor:
    """Negative log-likelihood of the error under a Laplace law of scale ``exp(log_scale)``, weighted as the L1 term.

    The prediction is detached: this term trains the error output to equal the expected |error| (the Laplace
    scale's maximum-likelihood value), and never pulls the sCT itself towards voxels it finds easy.
    """
    nll = (fake.detach() - real).abs() * torch.exp(-log_scale) + log_scale
    if mask is None:
        return nll.mean()
    w = mask + OUTSIDE_MASK_WEIGHT * (1 - mask)
    return (nll * w).sum() / w.sum()


def optimizers(cfg: Config, gen: torch.nn.Module, disc: torch.nn.Module | None,
               dev: torch.device) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer | None]:
    """Adam for the generator and, in pix2pix mode, the discriminator (fused kernels on CUDA)."""
    fused = dev.type == "cuda"
    make = lambda groups: torch.optim.Adam(groups, lr=cfg.train.lr, betas=tuple(cfg.train.betas), fused=fused)  # noqa: E731
    head = getattr(gen, "error_head", None)
    if head is None:
        groups = gen.parameters()
    else:  # the error output learns ERROR_HEAD_LR_FACTOR x faster: a short training must move it far from its start
        ids = {id(p) for p in head.parameters()}
        groups = [{"params": [p for p in gen.parameters() if id(p) not in ids]},
                  {"params": list(head.parameters()), "lr": cfg.train.lr * ERROR_HEAD_LR_FACTOR}]
    return make(groups), (make(disc.parameters()) if disc is not None else None)


class TrainStep:
    """One optimization step of the trainer: what ``medtrans train`` runs, and what the throughput benchmark times.

    The discriminator (pix2pix mode) is updated first on real and generated pairs, then the generator on the
    masked L1 term plus, in pix2pix mode, the adversarial term. Returns the step's (generator loss, L1,
    discriminator loss) as one device tensor, so that the loop needs no host synchronisation.
    """

    def __init__(self, generator: torch.nn.Module, discriminator: torch.nn.Module | None,
                 opt_g: torch.optim.Optimizer, opt_d: torch.optim.Optimizer | None, sched_g: Any, sched_d: Any,
                 train_cfg: Any, *, amp: bool, fmt: torch.memory_format) -> None:
        self.g, self.d = generator, discriminator
        self.opt_g, self.opt_d, self.sched_g, self.sched_d = opt_g, opt_d, sched_g, sched_d
        self.cfg, self.amp, self.fmt = train_cfg, amp, fmt
        self.adv = PatchAdversarialLoss(criterion=train_cfg.gan_loss)

    def _autocast(self, device_type: str) -> Any:
        # without AMP no autocast context at all: the step then also runs on the meta device (FLOP counting)
        return torch.autocast(device_type, dtype=torch.bfloat16) if self.amp else contextlib.nullcontext()

    def __call__(self, mr: torch.Tensor, ct: torch.Tensor, mk: torch.Tensor) -> torch.Tensor:
        device_type = mr.device.type
        if self.fmt is torch.channels_last:
            mr, ct = mr.contiguous(memory_format=self.fmt), ct.contiguous(memory_format=self.fmt)
        with self._autocast(device_type):
            out = self.g(mr)
        fake, log_scale = out[:, :1], (out[:, 1:] if out.shape[1] > 1 else None)
        d_loss = torch.zeros((), device=mr.device)
        if self.d is not None:
            self.opt_d.zero_grad(set_to_none=True)
            with self._autocast(device_type):
                logits = self.d(torch.cat([mr, mr]), torch.cat([ct, fake.detach()])).float()
                real_l, fake_l = logits.chunk(2)
                d_loss = 0.5 * (self.adv(real_l, target_is_real=True, for_discriminator=True)
                                + self.adv(fake_l, target_is_real=False, for_discriminator=True))
            d_loss.backward()
            self.opt_d.step()
            self.sched_d.step()
        self.opt_g.zero_grad(set_to_none=True)
        with self._autocast(device_type):
            l1 = masked_l1(fake.float(), ct, mk if self.cfg.masked_l1 else None)
            g_loss = self.cfg.l1_weight * l1
            if log_scale is not None:
                g_loss = g_loss + self.cfg.error_weight * laplace_nll(log_scale.float(), fake.float(), ct,
                                                                      mk if self.cfg.masked_l1 else None)
            if self.d is not None:
                g_adv = self.adv(self.d(mr, fake).float(), target_is_real=True, for_discriminator=False)
                g_loss = g_loss + self.cfg.gan_weight * g_adv
        g_loss.backward()
        self.opt_g.step()
        self.sched_g.step()
        return torch.stack([g_loss.detach(), l1.detach(), d_loss.detach()])
