"""Whole-volume synthetic CT from a trained generator: used by ``convert`` and by training's validation.

The MR is normalized with the shared :func:`medtrans.intensity.normalize_mr`, reoriented losslessly to
the canonical orientation, cut into 2D/2.5D slice stacks, pushed through the generator in batches (GPU
memory is bounded by the batch, not the volume), mapped back to HU and put on the MR's exact grid.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from medtrans.errors import MedtransError
from medtrans.geometry import array_from_canonical, resample_onto, to_canonical, working_grid
from medtrans.intensity import CT_BACKGROUND, MRNormalization, denormalize_ct, normalize_mr
from medtrans.models import Generator


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` -> CUDA when available else CPU; asking for CUDA without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise MedtransError("--device cuda was asked for, but PyTorch sees no CUDA device (use --device cpu)")
    return torch.device(name)


def auto_batch_size(device: torch.device) -> int:
    """Slices per forward pass: large batches feed a GPU, while on a CPU they only thrash the caches.

    Measured on 2 cores (benchmarks/convert.py, default model, 256x256 slices): batch 1-2 about 8.3 s per
    200-slice volume, batch 32 about 16 s.
    """
    return 32 if device.type == "cuda" else 2


#: Test-time passes of the uncertainty map: (left-right flip, intensity gain about the normalized background,
#: in-plane shift in pixels along both axes). Measured on a held-out pseudo-pair (docs/trust.md), shifts and
#: gains together rank the error better than flips and gains alone (Spearman 0.21-0.24 against 0.18-0.23).
UNCERTAINTY_PASSES: tuple[tuple[bool, float, int], ...] = (
    (False, 1.0, 0), (True, 1.0, 0), (False, 0.9, 0), (False, 1.1, 0), (False, 1.0, 1), (True, 1.0, -1))


def mean_and_spread(samples: list[sitk.Image]) -> tuple[sitk.Image, sitk.Image]:
    """Voxelwise mean and standard deviation (HU, float32) of sCTs on one grid (test-time passes, ensemble members)."""
    stack = np.stack([sitk.GetArrayViewFromImage(s) for s in samples]).astype(np.float32)
    mean, spread = sitk.GetImageFromArray(stack.mean(axis=0)), sitk.GetImageFromArray(stack.std(axis=0))
    mean.CopyInformation(samples[0])
    spread.CopyInformation(samples[0])
    return mean, spread


#: The in-plane box of a slice stack that the network sees: where the normalized MR differs from its background by
#: more than SIGNAL_TOLERANCE (normalized units: 5 % of the high percentile), widened by SIGNAL_MARGIN pixels of air on
#: every side, so that the network sees the body's edge with the context it was trained with.
SIGNAL_TOLERANCE = 0.1
SIGNAL_MARGIN = 32


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


def context_indices(n_slices: int, centre: np.ndarray, context: int) -> np.ndarray:
    """Slice indices of the 2.5D stack around each centre slice, clamped at the volume ends."""
    r = context // 2
    return np.clip(centre[:, None] + np.arange(-r, r + 1)[None, :], 0, n_slices - 1)


#: Axis order that puts a slice plane's normal first in a canonical (z, y, x) array (its inverse undoes it).
PLANE_AXES: dict[str, tuple[int, int, int]] = {"axial": (0, 1, 2), "coronal": (1, 0, 2), "sagittal": (2, 0, 1)}


@dataclass
class Predictor:
    """A generator ready for inference on one device: a slice model in its plane, or a 3D patch model."""

    generator: Generator
    mr_normalization: MRNormalization
    context_slices: int
    stride: int
    device: torch.device
    batch_size: int = 0  #: slices (3D: windows) per forward pass; 0 = auto (see :func:`auto_batch_size`)
    tta_flip: bool = False
    spacing: list[float] | None = None  #: working spacing the model was trained at (canonical x, y[, z]); None = native
    plane: str = "axial"  #: slice plane of a 2D/2.5D model; "all": applied in every plane, predictions averaged
    window: tuple[int, int, int] | None = None  #: 3D model: sliding-window size (z, y, x); None = a slice model
    overlap: float = 0.5  #: 3D model: overlap of neighbouring windows (blended with Gaussian weights)

    channels_last: bool = False  #: run a slice model in channels_last memory format (faster on CPUs: see convert)
    crop_to_signal: bool = True  #: run a slice model only over the in-plane box that holds signal (see signal_box)

    def __post_init__(self) -> None:
        self.batch_size = self.batch_size or auto_batch_size(self.device)
        if self.channels_last:
            self.generator.to(memory_format=torch.channels_last)

    @torch.inference_mode()
    def predict_normalized(self, mr_canonical: np.ndarray, background: float) -> np.ndarray:
        """(Z, H, W) normalized canonical MR -> (Z, H, W) normalized CT prediction (float32).

        A slice model runs on the slices of its plane; a 3D model slides its window over the volume. With
        ``tta_flip`` the left-right mirrored volume is predicted too and the two are averaged.
        """
        was_training = self.generator.training
        self.generator.eval()
        try:
            out = self._predict(mr_canonical, background)
            if self.tta_flip:
                mirrored = self._predict(np.ascontiguousarray(mr_canonical[..., ::-1]), background)
                out = 0.5 * (out + mirrored[..., ::-1])
        finally:
            self.generator.train(was_training)
        return np.ascontiguousarray(out, dtype=np.float32)

    def _predict(self, mr_canonical: np.ndarray, background: float) -> np.ndarray:
        if self.window is not None:
            return self._predict_windows(mr_canonical, background)
        if self.plane == "all":  # one model trained on every plane: applied in each, fused with equal weights
            return sum(self._predict_plane(mr_canonical, background, p) for p in PLANE_AXES) / len(PLANE_AXES)
        return self._predict_plane(mr_canonical, background, self.plane)

    def _predict_plane(self, mr_canonical: np.ndarray, background: float, plane: str) -> np.ndarray:
        axes = PLANE_AXES[plane]
        out = self._predict_slices(np.ascontiguousarray(np.transpose(mr_canonical, axes)), background)
        return np.transpose(out, np.argsort(axes))

    def _predict_slices(self, stack: np.ndarray, background: float) -> np.ndarray:
        """Slice stacks through the network, only over the in-plane box that holds the body (see
        :func:`signal_box`); outside it the prediction is air (a scan's field of view is often much larger)."""
        z, h, w = stack.shape
        rows, cols = signal_box(stack, background, self.stride) if self.crop_to_signal else (slice(0, h), slice(0, w))
        out = np.full((z, h, w), CT_BACKGROUND, np.float32)
        sub = stack[:, rows, cols]
        hh, ww = sub.shape[1:]
        ph, pw = (-hh) % self.stride, (-ww) % self.stride
        vol = torch.from_numpy(np.ascontiguousarray(sub, dtype=np.float32))
        if ph or pw:
            vol = F.pad(vol, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=float(background))
        vol = vol.to(self.device)
        use_amp = self.device.type == "cuda"
        for start in range(0, z, self.batch_size):
            centre = np.arange(start, min(z, start + self.batch_size))
            idx = torch.from_numpy(context_indices(z, centre, self.context_slices)).to(self.device)
            x = vol[idx]  # (B, k, H', W')
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=use_amp):
                y = self.generator(x).float()
            y = y[:, 0, ph // 2: ph // 2 + hh, pw // 2: pw // 2 + ww]
            out[centre, rows, cols] = y.cpu().numpy()
        return out

    def _predict_windows(self, volume: np.ndarray, background: float) -> np.ndarray:
        """MONAI's sliding-window inference over the volume (padded with the MR background to at least a window)."""
        from monai.inferers import sliding_window_inference

        shape = volume.shape
        pads = [max(0, win - n) for win, n in zip(self.window, shape, strict=True)]
        vol = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))
        if any(pads):  # F.pad takes the last axis first
            vol = F.pad(vol, [p for n in reversed(pads) for p in (n // 2, n - n // 2)], value=float(background))
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            y = sliding_window_inference(vol[None, None].to(self.device), roi_size=self.window,
                                         sw_batch_size=self.batch_size, predictor=self.generator,
                                         overlap=self.overlap, mode="gaussian", padding_mode="replicate")
        y = y[0, 0].float()
        crop = tuple(slice(p // 2, p // 2 + n) for p, n in zip(pads, shape, strict=True))
        return y[crop].cpu().numpy()

    def predict_image(self, mr: sitk.Image, *, normalized: tuple[sitk.Image, dict] | None = None,
                      timings: dict[str, float] | None = None) -> sitk.Image:
        """An MR image -> synthetic CT in HU (float32) on exactly the MR's grid.

        The normalized MR is resampled (linear) to the working spacing the model was trained at, predicted there,
        and the sCT is resampled (linear) back onto the MR's own grid.
        """
        return self.predict_passes(mr, ((False, 1.0, 0),), normalized=normalized, timings=timings)[0]

    def predict_passes(self, mr: sitk.Image, passes: tuple[tuple[bool, float, int], ...] = UNCERTAINTY_PASSES,
                       *, normalized: tuple[sitk.Image, dict] | None = None,
                       timings: dict[str, float] | None = None) -> list[sitk.Image]:
        """One sCT (HU, on the MR's grid) per test-time pass ``(left-right flip, intensity gain, shift)``.

        The gain scales the normalized MR about its background value, as if the normalization's high percentile
        had come out that much lower or higher; the shift moves the slices by whole pixels (undone on the
        output). The spread of the passes is the model's sensitivity to such plausible changes of its input (the
        uncertainty map, see docs/trust.md). ``normalized`` is ``normalize_mr(mr, self.mr_normalization)`` when the
        caller already has it (it is the costly part with N4). ``timings`` (seconds) accumulates ``to_model_grid``
        (resampling to the working spacing, reorienting), ``network`` (host-to-device copies included) and
        ``to_mr_grid`` (back to HU on the MR's grid).
        """
        clock = Stopwatch(timings)
        mr_norm, stats = normalized if normalized is not None else normalize_mr(mr, self.mr_normalization)
        background = stats["background"]
        with clock("to_model_grid"):
            grid = working_grid(mr, self.spacing) if self.spacing else None
            work = resample_onto(mr_norm, grid, default=background) if grid is not None else mr_norm
            canonical = sitk.GetArrayFromImage(to_canonical(work))
        outputs = []
        for flip, gain, shift in passes:
            with clock("network"):
                x = background + np.float32(gain) * (canonical - background) if gain != 1.0 else canonical
                x = x[..., ::-1] if flip else x
                x = np.roll(x, (shift, shift), axis=(1, 2)) if shift else x
                pred = self.predict_normalized(np.ascontiguousarray(x), background)
            with clock("to_mr_grid"):
                pred = np.roll(pred, (-shift, -shift), axis=(1, 2)) if shift else pred
                pred = pred[..., ::-1] if flip else pred
                hu = array_from_canonical(denormalize_ct(np.ascontiguousarray(pred)), reference=work)
                if grid is not None:
                    hu = resample_onto(hu, mr, default=-1024.0)
                    hu.CopyInformation(mr)
            outputs.append(hu)
        return outputs


class Stopwatch:
    """Accumulates wall seconds per named stage into a dict (or does nothing without one).

    Example:
        >>> t = {}
        >>> with Stopwatch(t)("decode"):
        ...     pass
        >>> list(t)
        ['decode']
    """

    def __init__(self, timings: dict[str, float] | None) -> None:
        self.timings = timings

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.timings is not None:
                self.timings[stage] = self.timings.get(stage, 0.0) + time.perf_counter() - start


def predictor_from_bundle(bundle, *, device: torch.device, batch_size: int = 0, tta_flip: bool = False) -> Predictor:
    """Build a :class:`Predictor` from a loaded :class:`medtrans.bundle.Bundle`."""
    from medtrans.models import total_stride

    g = bundle.generator().to(device)
    window = tuple(bundle.info["window"]) if bundle.model.spatial_dims == 3 else None
    # channels_last: 18 % less network time on the 2-core CPU (U-Net 32-256, 256x256 slices); a model of its own
    return Predictor(g, bundle.mr_normalization, bundle.model.context_slices, total_stride(bundle.model), device,
                     batch_size=batch_size, tta_flip=tta_flip, spacing=bundle.spacing, plane=bundle.model.plane,
                     window=window, overlap=bundle.model.sw_overlap,
                     channels_last=bundle.model.spatial_dims == 2 and device.type == "cpu")
