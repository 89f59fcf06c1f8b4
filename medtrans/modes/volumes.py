"""Samples cut across the prepared axial slices: coronal and sagittal 2.5D images, and 3D patches."""

from __future__ import annotations

import torch

from medtrans.intensity import CT_BACKGROUND
from medtrans.modes.base import Batch, BatchSource
from medtrans.modes.sampling import crop_origin, with_bias_field


def _z_extent(stream: BatchSource, idx: torch.Tensor, u: torch.Tensor, n_z: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each sample's ``n_z`` bank rows along z: uniform over the placements inside its case that contain the
    sample's centre slice (a thinner case is covered whole, padded: ``inside`` says which rows are real)."""
    bank = stream.bank
    span, centre = bank.span[idx], bank.centre[idx]
    z_lo = torch.maximum(span[:, 0], centre - n_z + 1)
    z_hi = torch.minimum(span[:, 1] - n_z, centre)
    z_lo, z_hi = torch.minimum(z_lo, z_hi), torch.maximum(z_lo, z_hi)
    z0 = z_lo + torch.floor(u * (z_hi - z_lo + 1).double()).long().clamp(max=z_hi - z_lo)
    zs = z0[:, None] + torch.arange(n_z, device=bank.mr.device)[None]  # (B, n_z)
    inside = (zs >= span[:, :1]) & (zs < span[:, 1:])
    return torch.minimum(torch.maximum(zs, span[:, :1]), span[:, 1:] - 1), inside


def _plane_images(bank, zs: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, box: torch.Tensor,
                  u: torch.Tensor, flips: torch.Tensor, plane: str) -> Batch:
    """Coronal (image (z, x) at a row of the body; neighbours are rows) or sagittal (image (z, y) at a column;
    neighbours are columns) 2.5D images."""
    dev = bank.mr.device
    h, w = bank.mr.shape[1:]
    r = bank.neighbours.shape[1] // 2
    k_off = torch.arange(-r, r + 1, device=dev)[None]
    if plane == "coronal":
        row = box[:, 0] + torch.floor(u * (box[:, 1] - box[:, 0] + 1).double()).long()
        nb = (row[:, None] + k_off).clamp(0, h - 1)  # (B, k)
        mr = bank.mr[zs[:, None, :, None], nb[:, :, None, None], cols[:, None, None, :]]
        ct = bank.ct[zs[:, :, None], row[:, None, None], cols[:, None, :]][:, None]
        mk = bank.mask[zs[:, :, None], row[:, None, None], cols[:, None, :]][:, None]
        return mr, ct, mk
    col = box[:, 2] + torch.floor(u * (box[:, 3] - box[:, 2] + 1).double()).long()
    nb = (col[:, None] + k_off).clamp(0, w - 1)
    nb = torch.where(flips[:, None], nb.flip(1), nb)  # mirroring keeps a sagittal image, reverses its neighbours
    mr = bank.mr[zs[:, None, :, None], rows[:, None, None, :], nb[:, :, None, None]]
    ct = bank.ct[zs[:, :, None], rows[:, None, :], col[:, None, None]][:, None]
    mk = bank.mask[zs[:, :, None], rows[:, None, :], col[:, None, None]][:, None]
    return mr, ct, mk


def volume_batch(stream: BatchSource, step: int, *, plane: str, depth: int) -> Batch:
    """3D patches of ``depth`` slices (``depth`` > 0: (B, 1, D, c, c)), or coronal/sagittal 2.5D images (B, k, c, c),
    cut from the cases' stacked axial slices; outside a case along z: MR background, air, no body."""
    bank = stream.bank
    dev = bank.mr.device
    idx, g, u, flips = stream.draws(step, 4)
    c = stream.crop
    h, w = bank.mr.shape[1:]
    box = bank.box[idx]
    zs, inside = _z_extent(stream, idx, u[0], depth or c)
    rows = crop_origin(box[:, 0], box[:, 1], c, h, u[1])[:, None] + torch.arange(c, device=dev)[None]
    cols = crop_origin(box[:, 2], box[:, 3], c, w, u[2])[:, None] + torch.arange(c, device=dev)[None]
    cols = torch.where(flips[:, None], cols.flip(1), cols)  # left-right flip
    if depth:
        at = (zs[:, :, None, None], rows[:, None, :, None], cols[:, None, None, :])
        mr, ct, mk = (bank.mr[at][:, None], bank.ct[at][:, None], bank.mask[at][:, None])
    else:
        mr, ct, mk = _plane_images(bank, zs, rows, cols, box, u[3], flips, plane)
    keep = inside[:, None, :, None, None] if depth else inside[:, None, :, None]  # broadcast over the z axis
    floor = bank.floor[idx].view(-1, *([1] * (mr.dim() - 1)))
    mr = torch.where(keep, mr.float(), floor)
    ct = torch.where(keep, ct.float(), CT_BACKGROUND)
    mk = torch.where(keep, mk.float(), 0.0)
    return with_bias_field(mr, stream, idx, g, depth=bool(depth)), ct, mk
