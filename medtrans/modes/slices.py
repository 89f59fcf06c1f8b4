"""2D/2.5D slice models: one plane (axial, coronal, sagittal), or one model on all three planes fused.

Training cuts 2.5D stacks (``model.context_slices`` neighbouring slices as channels) from the prepared axial slice
stacks: axial samples directly, coronal and sagittal ones across them (a ``train.crop_size``-slice extent of the
case along z). Inference permutes the canonical volume so that the plane's slices come first (:data:`PLANE_AXES`),
runs them through the network in batches over the in-plane box that holds the body (:func:`signal_box`), and
permutes back.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from medtrans.config import ModelConfig
from medtrans.intensity import CT_BACKGROUND
from medtrans.models import LOG_ERROR_RANGE
from medtrans.modes.base import Batch, BatchSource, Mode, Network, output_channels
from medtrans.modes.sampling import crop_origin, with_bias_field

#: Axis order that puts a slice plane's normal first in a canonical (z, y, x) array (its inverse undoes it).
PLANE_AXES: dict[str, tuple[int, int, int]] = {"axial": (0, 1, 2), "coronal": (1, 0, 2), "sagittal": (2, 0, 1)}
#: The slice planes, in the order a multi-planar model's training steps cycle through them.
ALL_PLANES = ("axial", "coronal", "sagittal")
#: The in-plane box of a slice stack that the network sees: where the normalized MR differs from its background by
#: more than SIGNAL_TOLERANCE (normalized units: 5 % of the high percentile), widened by SIGNAL_MARGIN pixels of air on
#: every side, so that the network sees the body's edge with the context it was trained with.
SIGNAL_TOLERANCE = 0.1
SIGNAL_MARGIN = 32


def context_indices(n_slices: int, centre: np.ndarray, context: int) -> np.ndarray:
    """Slice indices of the 2.5D stack around each centre slice, clamped at the volume ends."""
    r = context // 2
    return np.clip(centre[:, None] + np.arange(-r, r + 1)[None, :], 0, n_slices - 1)


def signal_box(stack: np.ndarray, background: float, stride: int) -> tuple[slice, slice]:
    """Rows and columns of a (Z, H, W) stack that hold signal, widened by :data:`SIGNAL_MARGIN` and rounded out to a
    multiple of ``stride`` (the whole slice when nothing stands out).

    Example:
        >>> vol = np.full((2, 100, 120), -1.0, np.float32)
        >>> vol[:, 40:50, 60:70] = 0.5
        >>> signal_box(vol, -1.0, 8)
        (slice(5, 85, None), slice(25, 105, None))
    """
    h, w = stack.shape[1:]
    hit = np.abs(stack - np.float32(background)) > SIGNAL_TOLERANCE
    rows, cols = np.flatnonzero(hit.any(axis=(0, 2))), np.flatnonzero(hit.any(axis=(0, 1)))
    if rows.size == 0:
        return slice(0, h), slice(0, w)

    def span(idx: np.ndarray, n: int) -> slice:
        lo, hi = max(0, int(idx[0]) - SIGNAL_MARGIN), min(n, int(idx[-1]) + 1 + SIGNAL_MARGIN)
        length = min(n, hi - lo + (-(hi - lo)) % stride)  # a multiple of the stride where the slice allows
        lo = max(0, min(lo - (length - (hi - lo)) // 2, n - length))
        return slice(lo, lo + length)

    return span(rows, h), span(cols, w)


def run_slices(net: Network, stack: np.ndarray, background: float) -> np.ndarray:
    """A (Z, H, W) stack of slices through the network -> (C, Z, H, W), C the generator's outputs; only over the box
    that holds the body (:func:`signal_box`, when ``net.crop_to_signal``); outside it the prediction is air, with
    the least error (a scan's field of view is often much larger)."""
    z, h, w = stack.shape
    rows, cols = signal_box(stack, background, net.stride) if net.crop_to_signal else (slice(0, h), slice(0, w))
    out = np.empty((output_channels(net), z, h, w), np.float32)
    out[0] = CT_BACKGROUND
    out[1:] = LOG_ERROR_RANGE[0]
    sub = stack[:, rows, cols]
    hh, ww = sub.shape[1:]
    ph, pw = (-hh) % net.stride, (-ww) % net.stride
    vol = torch.from_numpy(np.ascontiguousarray(sub, dtype=np.float32))
    if ph or pw:
        vol = F.pad(vol, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=float(background))
    vol = vol.to(net.device)
    use_amp = net.device.type == "cuda"
    for start in range(0, z, net.batch_size):
        centre = np.arange(start, min(z, start + net.batch_size))
        idx = torch.from_numpy(context_indices(z, centre, net.context_slices)).to(net.device)
        x = vol[idx]  # (B, k, H', W')
        if net.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(net.device.type, dtype=torch.bfloat16, enabled=use_amp):
            y = net.generator(x).float()
        y = y[:, :, ph // 2: ph // 2 + hh, pw // 2: pw // 2 + ww].transpose(0, 1)
        out[:, centre, rows, cols] = y.cpu().numpy()
    return out


def axial_batch(stream: BatchSource, step: int) -> Batch:
    """2D/2.5D axial samples: crops of the prepared slices over the body, their neighbours as channels."""
    bank = stream.bank
    dev = bank.mr.device
    idx, g, u, flips = stream.draws(step, 2)
    c = stream.crop
    h, w = bank.mr.shape[1:]
    box = bank.box[idx]
    r0 = crop_origin(box[:, 0], box[:, 1], c, h, u[0])
    c0 = crop_origin(box[:, 2], box[:, 3], c, w, u[1])
    rows = (r0[:, None] + torch.arange(c, device=dev)[None])[:, :, None]  # (B, c, 1)
    cols = c0[:, None] + torch.arange(c, device=dev)[None]  # (B, c)
    cols = torch.where(flips[:, None], cols.flip(1), cols)[:, None, :]  # (B, 1, c)
    nb = bank.neighbours[idx]  # (B, k)
    centre = bank.centre[idx]
    mr = bank.mr[nb[:, :, None, None], rows[:, None], cols[:, None]]  # (B, k, c, c)
    ct = bank.ct[centre[:, None, None], rows, cols][:, None]
    mk = bank.mask[centre[:, None, None], rows, cols][:, None]
    mr = with_bias_field(mr.float(), stream, idx, g, depth=False)
    return mr, ct.float(), mk.float()


class SliceMode(Mode):
    """A 2D/2.5D model of one slice plane (``model.plane``: axial, coronal or sagittal)."""

    def __init__(self, plane: str) -> None:
        self.plane = plane
        self.name = plane
        self.summary = f"2D/2.5D slice model, {plane} slices (model.plane={plane})"
        self.cut_note = "slices are cut axially either way" if plane == "axial" else \
            f"{plane} slices are cut in the canonical orientation either way"

    def selects(self, model: ModelConfig) -> bool:
        return model.spatial_dims == 2 and model.plane == self.plane

    def batch(self, stream: BatchSource, step: int) -> Batch:
        if self.plane == "axial":
            return axial_batch(stream, step)
        from medtrans.modes.volumes import volume_batch

        return volume_batch(stream, step, plane=self.plane, depth=0)

    def predict(self, net: Network, volume: np.ndarray, background: float) -> np.ndarray:
        axes = PLANE_AXES[self.plane]
        out = run_slices(net, np.ascontiguousarray(np.transpose(volume, axes)), background)
        return np.transpose(out, (0, *(1 + np.argsort(axes))))


class MultiPlaneMode(Mode):
    """One 2.5D model trained on all three planes (steps cycle them) and applied in each, fused with equal weights
    (``model.plane: all``, ``--config multiplanar``): tri-planar at one model's training cost."""

    name = "multiplanar"
    summary = "one 2.5D model on axial, coronal and sagittal slices, fused (model.plane=all)"
    cut_note = "slices are cut in all three planes either way"

    def __init__(self) -> None:
        self.planes = [SliceMode(p) for p in ALL_PLANES]

    def selects(self, model: ModelConfig) -> bool:
        return model.spatial_dims == 2 and model.plane == "all"

    def batch(self, stream: BatchSource, step: int) -> Batch:
        return self.planes[step % 3].batch(stream, step)

    def predict(self, net: Network, volume: np.ndarray, background: float) -> np.ndarray:
        return sum(p.predict(net, volume, background) for p in self.planes) / len(self.planes)
