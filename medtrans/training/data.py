"""Training data: prepared slices held in memory, batches gathered and augmented on the device.

Batch ``s`` is a pure function of (seed, rank, world size, step): the order comes from
:class:`torch.utils.data.DistributedSampler` epochs and the augmentation from a generator seeded by the
step. Resuming at any step therefore reproduces the data stream exactly, with no loader state to save.
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
    cases: list[str]

    @property
    def num_samples(self) -> int:
        return int(self.centre.numel())

    def to(self, device: torch.device) -> SliceBank:
        pin = device.type == "cuda"
        move = (lambda t: t.pin_memory().to(device, non_blocking=True)) if pin else (lambda t: t.to(device))
        return SliceBank(move(self.mr), move(self.ct), move(self.mask), self.neighbours.to(device),
                         self.centre.to(device), self.cases)


def load_bank(prep: str | Path, manifest: dict[str, Any], split: str, context: int) -> SliceBank:
    """Load the prepared slices of ``split`` cases (only slices with enough body become samples)."""
    prep = Path(prep)
    names = manifest["split"].get(split, [])
    records = {r["case"]: r for r in manifest["cases"]}
    mrs, cts, masks, nbrs, centres = [], [], [], [], []
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
        offset += mr.shape[0]
    if not names or offset == 0:
        raise DatasetError(f"the prepared dataset has no '{split}' cases", path=prep)
    return SliceBank(
        torch.from_numpy(np.concatenate(mrs)), torch.from_numpy(np.concatenate(cts)),
        torch.from_numpy(np.concatenate(masks)), torch.from_numpy(np.concatenate(nbrs)),
        torch.from_numpy(np.concatenate(centres)), list(names),
    )


class BatchStream:
    """Deterministic batches for one rank: ``batch(step)`` needs no state beyond the step number."""

    def __init__(self, bank: SliceBank, *, batch_size: int, crop: int, flip: bool, seed: int, rank: int,
                 world: int) -> None:
        self.bank, self.batch_size, self.crop, self.flip = bank, batch_size, crop, flip
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
        epoch, j = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            self._sampler.set_epoch(epoch)
            self._order = list(iter(self._sampler))
            self._epoch = epoch
        chosen = self._order[j * self.batch_size:(j + 1) * self.batch_size]
        if len(chosen) < self.batch_size:  # fewer samples than a batch: wrap around
            chosen = (self._order * (self.batch_size // max(1, len(self._order)) + 1))[: self.batch_size]
        return torch.tensor(chosen, dtype=torch.int64)

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mr (B,k,c,c), ct (B,1,c,c), mask (B,1,c,c)) as float32 on the bank's device."""
        bank = self.bank
        dev = bank.mr.device
        idx = self._indices(step).to(dev)
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + step) * 97 + self.rank)
        b, c = idx.numel(), self.crop
        h, w = bank.mr.shape[1:]
        r0 = torch.randint(0, h - c + 1, (b,), generator=g).to(dev)
        c0 = torch.randint(0, w - c + 1, (b,), generator=g).to(dev)
        flips = (torch.rand(b, generator=g) < 0.5).to(dev) if self.flip else torch.zeros(b, dtype=torch.bool,
                                                                                         device=dev)
        rows = (r0[:, None] + torch.arange(c, device=dev)[None])[:, :, None]  # (B, c, 1)
        cols = c0[:, None] + torch.arange(c, device=dev)[None]  # (B, c)
        cols = torch.where(flips[:, None], cols.flip(1), cols)[:, None, :]  # (B, 1, c)
        nb = bank.neighbours[idx]  # (B, k)
        centre = bank.centre[idx]
        mr = bank.mr[nb[:, :, None, None], rows[:, None], cols[:, None]]  # (B, k, c, c)
        ct = bank.ct[centre[:, None, None], rows, cols][:, None]
        mk = bank.mask[centre[:, None, None], rows, cols][:, None]
        return mr.float(), ct.float(), mk.float()
