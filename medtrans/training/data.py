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

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DistributedSampler

from medtrans.config import ModelConfig
from medtrans.errors import DatasetError
from medtrans.intensity import MR_PERCENTILE_BACKGROUND
from medtrans.modes import context_indices, mode_of
from medtrans.prepared import PreparedDataset


def load_manifest(prep: str | Path) -> dict[str, Any]:
    """A prepared dataset's manifest (one clear error when the folder is not one)."""
    return PreparedDataset.open(prep).manifest


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
    floor: torch.Tensor | None = None  # (M,) float32: the lowest normalized MR value of the sample's case (padding)
    background: torch.Tensor | None = None  # (M,) float32: the normalized zero MR signal of the sample's case

    def background_of(self, idx: torch.Tensor) -> torch.Tensor:
        """The normalized value of zero MR signal for samples ``idx`` (percentile normalization's when unknown)."""
        if self.background is None:
            return torch.full(idx.shape, MR_PERCENTILE_BACKGROUND, dtype=torch.float32, device=idx.device)
        return self.background[idx]

    @property
    def num_samples(self) -> int:
        return int(self.centre.numel())

    def to(self, device: torch.device) -> SliceBank:
        pin = device.type == "cuda"
        move = (lambda t: t.pin_memory().to(device, non_blocking=True)) if pin else (lambda t: t.to(device))
        optional = lambda t: t.to(device) if t is not None else None  # noqa: E731
        return SliceBank(move(self.mr), move(self.ct), move(self.mask), self.neighbours.to(device),
                         self.centre.to(device), self.box.to(device), self.cases, optional(self.span),
                         optional(self.floor), optional(self.background))


def load_bank(prep: str | Path, manifest: dict[str, Any], split: str, context: int) -> SliceBank:
    """Load the prepared slices of ``split`` cases (only slices with enough body become samples)."""
    dataset = PreparedDataset(Path(prep), manifest)
    names = dataset.split(split)
    mrs, cts, masks, nbrs, centres, spans, floors, backgrounds = [], [], [], [], [], [], [], []
    offset = 0
    for name in names:
        mr, ct, mk = dataset.case(name).slices()
        if mrs and mr.shape[1:] != mrs[0].shape[1:]:
            raise DatasetError(f"case {name}: slice size {mr.shape[1:]} differs from {mrs[0].shape[1:]}; "
                               "prepare all cases with one prepare.slice_size", path=dataset.root / name)
        record = dataset.record(name)
        keep = np.asarray(record["slices"]["keep"], np.int64)
        mrs.append(np.asarray(mr))
        cts.append(np.asarray(ct))
        masks.append(np.asarray(mk))
        nbrs.append(context_indices(mr.shape[0], keep, context) + offset)
        centres.append(keep + offset)
        spans.append(np.tile([offset, offset + mr.shape[0]], (len(keep), 1)))
        floors.append(np.full(len(keep), float(np.min(mr)), np.float32))  # normalized MR never goes below it
        background = ((record.get("normalization") or {}).get("mr") or {}).get("background", MR_PERCENTILE_BACKGROUND)
        backgrounds.append(np.full(len(keep), background, np.float32))
        offset += mr.shape[0]
    if not names or offset == 0:
        raise DatasetError(f"the prepared dataset has no '{split}' cases", path=dataset.root)
    all_masks, all_centres = np.concatenate(masks), np.concatenate(centres)
    return SliceBank(
        torch.from_numpy(np.concatenate(mrs)), torch.from_numpy(np.concatenate(cts)),
        torch.from_numpy(all_masks), torch.from_numpy(np.concatenate(nbrs)),
        torch.from_numpy(all_centres), torch.from_numpy(body_boxes(all_masks[all_centres])), list(names),
        torch.from_numpy(np.concatenate(spans).astype(np.int64)), torch.from_numpy(np.concatenate(floors)),
        torch.from_numpy(np.concatenate(backgrounds)),
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


class BatchStream:
    """Deterministic batches for one rank: ``batch(step)`` needs no state beyond the step number.

    ``plane`` (``model.plane``) and ``depth`` (a 3D model's ``model.patch_depth``, 0 for slice models) choose the mode
    whose sampler cuts the batches (:mod:`medtrans.modes`): axial 2D/2.5D samples by default, coronal/sagittal images
    cut across the prepared slices, ``all`` cycling the three planes, 3D patches of ``depth`` slices.
    """

    def __init__(self, bank: SliceBank, *, batch_size: int, crop: int, flip: bool, seed: int, rank: int,
                 world: int, bias_field: float = 0.0, plane: str = "axial", depth: int = 0) -> None:
        self.bank, self.batch_size, self.crop, self.flip = bank, batch_size, crop, flip
        self.bias_field, self.plane, self.depth = bias_field, plane, depth
        self.mode = mode_of(ModelConfig(spatial_dims=3 if depth else 2, plane=plane, context_slices=1 if depth else 3))
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
        """(mr (B,k,c,c), ct (B,1,c,c), mask (B,1,c,c)) as float32 on the bank's device; 3D: (B,1,D,c,c) each. The
        mode (:mod:`medtrans.modes`) cuts them."""
        return self.mode.batch(self, step)

    def draws(self, step: int, n_uniform: int) -> tuple[torch.Tensor, torch.Generator, torch.Tensor, torch.Tensor]:
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
