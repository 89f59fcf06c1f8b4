"""What every mode's training sampler shares: crop origins on the body, smooth bias fields on the MR signal."""

from __future__ import annotations

import torch


def crop_origin(first: torch.Tensor, last: torch.Tensor, crop: int, size: int, u: torch.Tensor) -> torch.Tensor:
    """Crop origins uniform over the placements that stay on the body extent [first, last] (plus a margin)."""
    margin = crop // 4
    lo = torch.clamp(first - margin, 0, size - crop)
    hi = torch.clamp(last + 1 + margin - crop, 0, size - crop)
    lo, hi = torch.minimum(lo, hi), torch.maximum(lo, hi)
    return lo + torch.floor(u * (hi - lo + 1).double()).long().clamp(max=hi - lo)


def bias_fields(coef: torch.Tensor, size: int) -> torch.Tensor:
    """Smooth multiplicative fields exp(a x + b y + c xy + d x^2 + e y^2) over a crop, one per row of ``coef``."""
    t = torch.linspace(-1.0, 1.0, size, device=coef.device)
    y, x = t[:, None], t[None, :]
    basis = torch.stack([x.expand(size, size), y.expand(size, size), x * y, (x * x).expand(size, size),
                         (y * y).expand(size, size)])  # (5, c, c)
    return torch.exp(torch.einsum("bk,khw->bhw", coef, basis))[:, None]  # (B, 1, c, c), shared by the k slices


def with_bias_field(mr: torch.Tensor, stream, idx: torch.Tensor, g: torch.Generator, *, depth: bool) -> torch.Tensor:
    """``mr`` times a random smooth field applied to the MR *signal*: about each case's normalized background (zero
    signal: -1 for percentile normalization, -mean/std for z-score), so that air stays air."""
    if stream.bias_field <= 0:
        return mr
    b, c = idx.numel(), stream.crop
    coef = (torch.rand(b, 5, generator=g, device=mr.device) * 2 - 1).mul_(stream.bias_field)
    field = bias_fields(coef, c)
    background = stream.bank.background_of(idx).view(-1, *([1] * (mr.dim() - 1)))
    return (mr - background) * (field[:, :, None] if depth else field) + background
