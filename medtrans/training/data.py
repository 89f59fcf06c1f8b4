"""Training data: prepared slices held in memory, batches gathered and augmented on the device.

Batch ``s`` is a pure function of (seed, rank, world size, step): the order comes from
:class:`torch.utils.data.DistributedSampler` epochs and the augmentation from a generator seeded by the
step. Resuming at any step therefore reproduces the data stream exactly, with no loader state to save.

Crops are drawn over the body, not over the whole padded slice: the crop's origin is uniform over the
positions that keep it within the slice's body bounding box widened by a margin of a quarter crop
(or that contain the whole body extent along an axis where the body is smaller than the crop). With
prepared slices padded well beyond the body, uniform crops would spend much of the compute on air.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DistributedSampler

from medtrans.errors import DatasetError
from medtrans.inference import context_indices


def load_manifest(prep: str | Path) -> dict[str, Any]:
    prep = Path(prep)
    f = prep / "manifest.json"
    if not f.is_file():
        raise DatasetError("is not a prepared dataset (manifest.json missing; run medtrans prepare)", path=prep)
    try:
        return json.loads(f.read_text())
    except json.JSONDecodeError as exc:
        raise DatasetError(f"manifest.json is not valid JSON: {exc}", path=prep) from None


@dataclass
class SliceBank:
    """All training slices of a split, concatenated along the slice axis."""

    mr: torch.Tensor  # (N, H, W) float16
    ct: torch.Tensor  # (N, H, W) float16
    mask: torch.Tensor  # (N, H, W) uint8
    neighbours: torch.Tensor  # (M, k) int64: rows of ``mr`` forming each sample's 2.5D stack
    centre: torch.Tensor  # (M,) int64: the centre slice of each sample
    box: torch.Tensor  # (M, 4) int64: body bounding box of the centre slice (row min, row max, col min, col max)
    cases: list[str]
    span: torch.Tensor | None = None  # (M, 2) int64: first and one-past-last bank row of the sample's case
    floor: torch.Tensor | None = None  # (M,) float32: the normalized MR background of the sample's case

    @property
    def num_samples(self) -> int:
        return int(self.centre.numel())

    def to(self, device: torch.device) -> SliceBank:
        pin = device.type == "cuda"
        move = (lambda t: t.pin_memory().to(device, non_blocking=True)) if pin else (lambda t: t.to(device))
        return SliceBank(move(self.mr), move(self.ct), move(self.mask), self.neighbours.to(device),
                         self.centre.to(device), self.box.to(device), self.cases,
                         self.span.to(device) if self.span is not None else None,
                         self.floor.to(device) if self.floor is not None else None)


def load_bank(prep: str | Path, manifest: dict[str, Any], split: str, context: int) -> SliceBank:
    """Load the prepared slices of ``split`` cases (only slices with enough body become samples)."""
    prep = Path(prep)
    names = manifest["split"].get(split, [])
    records = {r["case"]: r for r in manifest["cases"]}
    mrs, cts, masks, nbrs, centres, spans, floors = [], [], [], [], [], [], []
    offset = 0
    for name in names:
        folder = prep / name
        try:
            mr = np.load(folder / "mr_slices.npy", mmap_mode="r")
            ct = np.load(folder / "ct_slices.npy", mmap_mode="r")
            mk = np.load(folder / "mask_slices.npy", mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise DatasetError(f"slice arrays of case {name} are missing or corrupt: {exc}", path=folder) from None
        if not (mr.shape == ct.shape == mk.shape):
            raise DatasetError(f"case {name}: slice arrays disagree in shape {mr.shape}/{ct.shape}/{mk.shape}",
                               path=folder)
        if mrs and mr.shape[1:] != mrs[0].shape[1:]:
            raise DatasetError(f"case {name}: slice size {mr.shape[1:]} differs from {mrs[0].shape[1:]}; "
                               "prepare all cases with one prepare.slice_size", path=folder)
        keep = np.asarray(records[name]["slices"]["keep"], np.int64)
        mrs.append(np.asarray(mr))
        cts.append(np.asarray(ct))
        masks.append(np.asarray(mk))
        nbrs.append(context_indices(mr.shape[0], keep, context) + offset)
        centres.append(keep + offset)
        spans.append(np.tile([offset, offset + mr.shape[0]], (len(keep), 1)))
        floors.append(np.full(len(keep), float(np.min(mr)), np.float32))  # normalized MR never goes below it
        offset += mr.shape[0]
    if not names or offset == 0:
        raise DatasetError(f"the prepared dataset has no '{split}' cases", path=prep)
    all_masks, all_centres = np.concatenate(masks), np.concatenate(centres)
    return SliceBank(
        torch.from_numpy(np.concatenate(mrs)), torch.from_numpy(np.concatenate(cts)),
        torch.from_numpy(all_masks), torch.from_numpy(np.concatenate(nbrs)),
        torch.from_numpy(all_centres), torch.from_numpy(body_boxes(all_masks[all_centres])), list(names),
        torch.from_numpy(np.concatenate(spans).astype(np.int64)), torch.from_numpy(np.concatenate(floors)),
    )


def body_boxes(masks: np.ndarray) -> np.ndarray:
    """(row min, row max, col min, col max) of each (H, W) mask's body; the whole slice where a mask is empty."""
    rows, cols = masks.any(axis=2), masks.any(axis=1)
    h, w = masks.shape[1:]

    def extent(hit: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        first = np.where(hit.any(axis=1), hit.argmax(axis=1), 0)
        last = np.where(hit.any(axis=1), n - 1 - hit[:, ::-1].argmax(axis=1), n - 1)
        return first, last

    (r0, r1), (c0, c1) = extent(rows, h), extent(cols, w)
    return np.stack([r0, r1, c0, c1], axis=1).astype(np.int64)


#: The slice planes, in the order a ``plane: all`` model's training steps cycle through them.
ALL_PLANES = ("axial", "coronal", "sagittal")


class BatchStream:
    """Deterministic batches for one rank: ``batch(step)`` needs no state beyond the step number.

    Axial 2D/2.5D samples by default; ``plane`` ``coronal``/``sagittal`` cut the same prepared volumes across the
    slices (a ``crop``-slice extent of the case along z), ``all`` takes step ``s``'s batch from plane
    ``ALL_PLANES[s % 3]``, and ``depth`` > 0 cuts 3D patches of ``depth`` slices (the model input is then
    ``(B, 1, depth, crop, crop)``).
    """

    def __init__(self, bank: SliceBank, *, batch_size: int, crop: int, flip: bool, seed: int, rank: int,
                 world: int, bias_field: float = 0.0, plane: str = "axial", depth: int = 0) -> None:
        self.bank, self.batch_size, self.crop, self.flip = bank, batch_size, crop, flip
        self.bias_field, self.plane, self.depth = bias_field, plane, depth
        self.seed, self.rank, self.world = seed, rank, world
        self._sampler = DistributedSampler(range(bank.num_samples), num_replicas=world, rank=rank, shuffle=True,
                                           seed=seed, drop_last=False)
        self.per_epoch = max(1, len(self._sampler) // batch_size)
        self._epoch = -1
        self._order: list[int] = []
        h, w = bank.mr.shape[1:]
        if crop > h or crop > w:
            raise DatasetError(f"train.crop_size {crop} is larger than the prepared slices ({h}x{w})")

    def _indices(self, step: int) -> torch.Tensor:
        """The step's sample indices, on the bank's device: the epoch's order is copied there once per epoch,
        so a step slices it without a host-to-device copy (which would make the host wait for the GPU)."""
        epoch, j = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            self._sampler.set_epoch(epoch)
            self._order = list(iter(self._sampler))
            if len(self._order) < self.batch_size:  # fewer samples than a batch: wrap around
                self._order = (self._order * (self.batch_size // max(1, len(self._order)) + 1))[: self.batch_size]
            self._order_on_device = torch.tensor(self._order, dtype=torch.int64, device=self.bank.mr.device)
            self._epoch = epoch
        return self._order_on_device[j * self.batch_size:(j + 1) * self.batch_size]

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mr (B,k,c,c), ct (B,1,c,c), mask (B,1,c,c)) as float32 on the bank's device; 3D: (B,1,D,c,c) each."""
        plane = ALL_PLANES[step % 3] if self.plane == "all" else self.plane  # "all": the steps cycle the planes
        if self.depth or plane != "axial":
            return self._volume_batch(step, plane)
        bank = self.bank
        dev = bank.mr.device
        idx, g, u, flips = self._draws(step, 2)
        b, c = idx.numel(), self.crop
        h, w = bank.mr.shape[1:]
        box = bank.box[idx]
        r0 = _crop_origin(box[:, 0], box[:, 1], c, h, u[0])
        c0 = _crop_origin(box[:, 2], box[:, 3], c, w, u[1])
        rows = (r0[:, None] + torch.arange(c, device=dev)[None])[:, :, None]  # (B, c, 1)
        cols = c0[:, None] + torch.arange(c, device=dev)[None]  # (B, c)
        cols = torch.where(flips[:, None], cols.flip(1), cols)[:, None, :]  # (B, 1, c)
        nb = bank.neighbours[idx]  # (B, k)
        centre = bank.centre[idx]
        mr = bank.mr[nb[:, :, None, None], rows[:, None], cols[:, None]]  # (B, k, c, c)
        ct = bank.ct[centre[:, None, None], rows, cols][:, None]
        mk = bank.mask[centre[:, None, None], rows, cols][:, None]
        mr = mr.float()
        if self.bias_field > 0:
            coef = (torch.rand(b, 5, generator=g, device=dev) * 2 - 1).mul_(self.bias_field)
            mr = (mr + 1.0) * _bias_fields(coef, c) - 1.0  # MR signal 0 is -1 once normalized
        return mr, ct.float(), mk.float()

    def _draws(self, step: int, n_uniform: int) -> tuple[torch.Tensor, torch.Generator, torch.Tensor, torch.Tensor]:
        """The step's samples and its random numbers, in a fixed order: the sample indices, the step's generator
        (seeded by seed, step and rank, on the bank's device), ``n_uniform`` float64 uniforms per sample, flips."""
        dev = self.bank.mr.device
        idx = self._indices(step)
        g = torch.Generator(device=dev).manual_seed((self.seed * 1_000_003 + step) * 97 + self.rank)
        b = idx.numel()
        u = torch.rand(n_uniform, b, generator=g, dtype=torch.float64, device=dev)
        flips = (torch.rand(b, generator=g, device=dev) < 0.5 if self.flip
                 else torch.zeros(b, dtype=torch.bool, device=dev))
        return idx, g, u, flips

    def _volume_batch(self, step: int, plane: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """3D patches, or coronal/sagittal 2.5D images, cut from the cases' stacked axial slices."""
        bank = self.bank
        dev = bank.mr.device
        idx, g, u, flips = self._draws(step, 4)
        b, c = idx.numel(), self.crop
        h, w = bank.mr.shape[1:]
        box, span, centre = bank.box[idx], bank.span[idx], bank.centre[idx]
        n_z = self.depth or c
        # z extent: uniform over the placements inside the case that contain the sample's centre slice; a case
        # thinner than the extent is covered whole, padded with background (as inference pads a thin volume)
        z_lo = torch.maximum(span[:, 0], centre - n_z + 1)
        z_hi = torch.minimum(span[:, 1] - n_z, centre)
        z_lo, z_hi = torch.minimum(z_lo, z_hi), torch.maximum(z_lo, z_hi)
        z0 = z_lo + torch.floor(u[0] * (z_hi - z_lo + 1).double()).long().clamp(max=z_hi - z_lo)
        zs = z0[:, None] + torch.arange(n_z, device=dev)[None]  # (B, n_z)
        inside = (zs >= span[:, :1]) & (zs < span[:, 1:])
        zs = torch.minimum(torch.maximum(zs, span[:, :1]), span[:, 1:] - 1)
        rows = _crop_origin(box[:, 0], box[:, 1], c, h, u[1])[:, None] + torch.arange(c, device=dev)[None]
        cols = _crop_origin(box[:, 2], box[:, 3], c, w, u[2])[:, None] + torch.arange(c, device=dev)[None]
        cols = torch.where(flips[:, None], cols.flip(1), cols)  # left-right flip
        if self.depth:  # (B, 1, D, c, c)
            at = (zs[:, :, None, None], rows[:, None, :, None], cols[:, None, None, :])
            mr, ct, mk = (bank.mr[at][:, None], bank.ct[at][:, None], bank.mask[at][:, None])
        else:
            r = self.bank.neighbours.shape[1] // 2
            k_off = torch.arange(-r, r + 1, device=dev)[None]
            if plane == "coronal":  # image (z, x) at a row of the body; neighbours are rows
                row = box[:, 0] + torch.floor(u[3] * (box[:, 1] - box[:, 0] + 1).double()).long()
                nb = (row[:, None] + k_off).clamp(0, h - 1)  # (B, k)
                mr = bank.mr[zs[:, None, :, None], nb[:, :, None, None], cols[:, None, None, :]]
                ct = bank.ct[zs[:, :, None], row[:, None, None], cols[:, None, :]][:, None]
                mk = bank.mask[zs[:, :, None], row[:, None, None], cols[:, None, :]][:, None]
            else:  # sagittal: image (z, y) at a column of the body; neighbours are columns
                col = box[:, 2] + torch.floor(u[3] * (box[:, 3] - box[:, 2] + 1).double()).long()
                nb = (col[:, None] + k_off).clamp(0, w - 1)
                # left-right mirroring leaves a sagittal image as it is and reverses its stack of neighbours
                nb = torch.where(flips[:, None], nb.flip(1), nb)
                mr = bank.mr[zs[:, None, :, None], rows[:, None, None, :], nb[:, :, None, None]]
                ct = bank.ct[zs[:, :, None], rows[:, None, :], col[:, None, None]][:, None]
                mk = bank.mask[zs[:, :, None], rows[:, None, :], col[:, None, None]][:, None]
        # outside the case along z: MR background, air, no body (shaped to broadcast over the samples' z axis)
        keep = inside[:, None, :, None, None] if self.depth else inside[:, None, :, None]
        floor = bank.floor[idx].view(-1, *([1] * (mr.dim() - 1)))
        mr = torch.where(keep, mr.float(), floor)
        ct = torch.where(keep, ct.float(), -1.0)
        mk = torch.where(keep, mk.float(), 0.0)
        if self.bias_field > 0:
            coef = (torch.rand(b, 5, generator=g, device=dev) * 2 - 1).mul_(self.bias_field)
            field = _bias_fields(coef, c)
            mr = (mr + 1.0) * (field[:, :, None] if self.depth else field) - 1.0
        return mr, ct, mk


def _crop_origin(first: torch.Tensor, last: torch.Tensor, crop: int, size: int, u: torch.Tensor) -> torch.Tensor:
    """Crop origins uniform over the placements that stay on the body extent [first, last] (plus a margin)."""
    margin = crop // 4
    lo = torch.clamp(first - margin, 0, size - crop)
    hi = torch.clamp(last + 1 + margin - crop, 0, size - crop)
    lo, hi = torch.minimum(lo, hi), torch.maximum(lo, hi)
    return lo + torch.floor(u * (hi - lo + 1).double()).long().clamp(max=hi - lo)


def _bias_fields(coef: torch.Tensor, size: int) -> torch.Tensor:
    """Smooth multiplicative fields exp(a x + b y + c xy + d x^2 + e y^2) over a crop, one per row of ``coef``."""
    t = torch.linspace(-1.0, 1.0, size, device=coef.device)
    y, x = t[:, None], t[None, :]
    basis = torch.stack([x.expand(size, size), y.expand(size, size), x * y, (x * x).expand(size, size),
                         (y * y).expand(size, size)])  # (5, c, c)
    return torch.exp(torch.einsum("bk,khw->bhw", coef, basis))[:, None]  # (B, 1, c, c), shared by the k slices
