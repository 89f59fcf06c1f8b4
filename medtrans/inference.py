"""Whole-volume synthetic CT from a trained generator: used by ``convert`` and by training's validation.

The MR is normalized with the shared :func:`medtrans.intensity.normalize_mr`, reoriented losslessly to
the canonical orientation, cut into 2D/2.5D slice stacks, pushed through the generator in batches (GPU
memory is bounded by the batch, not the volume), mapped back to HU and put on the MR's exact grid.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
import torch

from medtrans.bundle import Bundle
from medtrans.calibration import apply_calibration
from medtrans.config import ModelConfig
from medtrans.errors import MedtransError
from medtrans.geometry import array_from_canonical, resample_onto, to_canonical, working_grid
from medtrans.intensity import AIR_HU, CT_HU_PER_UNIT, MRNormalization, denormalize_ct, normalize_mr
from medtrans.models import Generator
from medtrans.modes import Mode, mode_of


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
#: These are the map of models without an error output (bundles from before it); models with one use
#: :data:`ERROR_PASSES` and their predicted error instead (docs/trust.md).
UNCERTAINTY_PASSES: tuple[tuple[bool, float, int], ...] = (
    (False, 1.0, 0), (True, 1.0, 0), (False, 0.9, 0), (False, 1.1, 0), (False, 1.0, 1), (True, 1.0, -1))
#: Passes of a model with an error output: as is and mirrored (what ``--tta`` costs), their mean is the sCT.
ERROR_PASSES: tuple[tuple[bool, float, int], ...] = ((False, 1.0, 0), (True, 1.0, 0))


def mean_and_spread(samples: list[sitk.Image]) -> tuple[sitk.Image, sitk.Image]:
    """Voxelwise mean and standard deviation (HU, float32) of sCTs on one grid (test-time passes, ensemble members)."""
    stack = np.stack([sitk.GetArrayViewFromImage(s) for s in samples]).astype(np.float32)
    mean, spread = sitk.GetImageFromArray(stack.mean(axis=0)), sitk.GetImageFromArray(stack.std(axis=0))
    mean.CopyInformation(samples[0])
    spread.CopyInformation(samples[0])
    return mean, spread


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
    plane: str = "axial"  #: ``model.plane`` of a 2D/2.5D model; "all": applied in every plane, predictions averaged
    window: tuple[int, int, int] | None = None  #: 3D model: sliding-window size (z, y, x); None = a slice model
    overlap: float = 0.5  #: 3D model: overlap of neighbouring windows (blended with Gaussian weights)

    channels_last: bool = False  #: run a slice model in channels_last memory format (faster on CPUs: see convert)
    crop_to_signal: bool = True  #: run a slice model only over the in-plane box that holds signal (see signal_box)
    error_calibration: dict | None = None  #: the bundle's calibration of the error output (medtrans.calibration)

    mode: Mode = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.batch_size = self.batch_size or auto_batch_size(self.device)
        self.mode = mode_of(ModelConfig(spatial_dims=3 if self.window is not None else 2, plane=self.plane,
                                        context_slices=self.context_slices))
        if self.channels_last:
            self.generator.to(memory_format=torch.channels_last)

    @property
    def predicts_error(self) -> bool:
        """Whether the generator has the error output (:mod:`medtrans.models`)."""
        return int(getattr(self.generator, "out_channels", 1)) > 1

    def predict_normalized(self, mr_canonical: np.ndarray, background: float) -> np.ndarray:
        """(Z, H, W) normalized canonical MR -> (Z, H, W) normalized CT prediction (float32)."""
        return self.predict_outputs(mr_canonical, background)[0]

    @torch.inference_mode()
    def predict_outputs(self, mr_canonical: np.ndarray, background: float) -> np.ndarray:
        """(Z, H, W) normalized canonical MR -> (C, Z, H, W) outputs (float32: the normalized CT, then the log
        expected error if the model has it), by the model's mode (:mod:`medtrans.modes`). With ``tta_flip`` the
        left-right mirrored volume is predicted too and the two are averaged."""
        was_training = self.generator.training
        self.generator.eval()
        try:
            out = self.mode.predict(self, mr_canonical, background)
            if self.tta_flip:
                mirrored = self.mode.predict(self, np.ascontiguousarray(mr_canonical[..., ::-1]), background)
                out = 0.5 * (out + mirrored[..., ::-1])
        finally:
            self.generator.train(was_training)
        return np.ascontiguousarray(out, dtype=np.float32)

    def predict_image(self, mr: sitk.Image, *, normalized: tuple[sitk.Image, dict] | None = None,
                      timings: dict[str, float] | None = None) -> sitk.Image:
        """An MR image -> synthetic CT in HU (float32) on exactly the MR's grid.

        The normalized MR is resampled (linear) to the working spacing the model was trained at, predicted there,
        and the sCT is resampled (linear) back onto the MR's own grid.
        """
        return self.predict_passes(mr, ((False, 1.0, 0),), normalized=normalized, timings=timings)[0]

    def predict_with_error(self, mr: sitk.Image, *, normalized: tuple[sitk.Image, dict] | None = None,
                           timings: dict[str, float] | None = None) -> tuple[sitk.Image, sitk.Image]:
        """The sCT (mean of :data:`ERROR_PASSES`) and its expected absolute error (HU), both on the MR's grid.

        The error is the root of the mean square of the passes' predicted errors plus their variance, through the
        bundle's calibration when it has one (:mod:`medtrans.calibration`). Both are combined on the model's working
        grid and only the two results are resampled onto the MR's grid: at 0.5 mm the MR grid has 4x the voxels.
        """
        (work, grid), preds = self._model_grid_passes(mr, ERROR_PASSES, normalized=normalized, timings=timings)
        with Stopwatch(timings)("combine"):
            scts = np.stack([denormalize_ct(p[0]) for p in preds])
            errs = np.stack([np.exp(p[1]) * np.float32(CT_HU_PER_UNIT) for p in preds])
            sct = scts.mean(axis=0)
            raw = np.sqrt(np.mean(errs**2, axis=0) + scts.var(axis=0))
            error = apply_calibration(raw, sct, self.error_calibration)
            del scts, errs, raw
        with Stopwatch(timings)("to_mr_grid"):
            return (self._on_mr_grid(sct, work, grid, mr, AIR_HU), self._on_mr_grid(error, work, grid, mr, 0.0))

    def _model_grid_passes(self, mr: sitk.Image, passes: tuple[tuple[bool, float, int], ...], *,
                           normalized: tuple[sitk.Image, dict] | None, timings: dict[str, float] | None,
                           ) -> tuple[tuple[sitk.Image, sitk.Image | None], list[np.ndarray]]:
        """The network's outputs (C, Z, H, W; canonical, on the working grid, flips and shifts undone) per pass, with
        the working image and grid they lie on (see :meth:`predict_passes`)."""
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
                pred = self.predict_outputs(np.ascontiguousarray(x), background)
                pred = np.roll(pred, (-shift, -shift), axis=(2, 3)) if shift else pred
                outputs.append(np.ascontiguousarray(pred[..., ::-1] if flip else pred))
        return (work, grid), outputs

    def predict_passes(self, mr: sitk.Image, passes: tuple[tuple[bool, float, int], ...] = UNCERTAINTY_PASSES,
                       *, normalized: tuple[sitk.Image, dict] | None = None,
                       timings: dict[str, float] | None = None) -> list[sitk.Image]:
        """One sCT (HU, on the MR's grid) per test-time pass ``(left-right flip, intensity gain, shift)``.

        The gain scales the normalized MR about its background value, as if the normalization's high percentile
        had come out that much lower or higher; the shift moves the slices by whole pixels (undone on the
        output). The spread of the passes is the model's sensitivity to such plausible changes of its input (the
        uncertainty map of models without the error output, see docs/trust.md). ``normalized`` is
        ``normalize_mr(mr, self.mr_normalization)`` when the caller already has it (it is the costly part with N4).
        ``timings`` (seconds) accumulates ``to_model_grid`` (resampling to the working spacing, reorienting),
        ``network`` (host-to-device copies included) and ``to_mr_grid`` (back to HU on the MR's grid).
        """
        (work, grid), preds = self._model_grid_passes(mr, passes, normalized=normalized, timings=timings)
        with Stopwatch(timings)("to_mr_grid"):
            return [self._on_mr_grid(denormalize_ct(p[0]), work, grid, mr, AIR_HU) for p in preds]

    @staticmethod
    def _on_mr_grid(canonical: np.ndarray, work: sitk.Image, grid: sitk.Image | None, mr: sitk.Image,
                    default: float) -> sitk.Image:
        image = array_from_canonical(np.ascontiguousarray(canonical, dtype=np.float32), reference=work)
        if grid is not None:
            image = resample_onto(image, mr, default=default)
            image.CopyInformation(mr)
        return image


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


def predictor_from_bundle(bundle: Bundle, *, device: torch.device, batch_size: int = 0,
                          tta_flip: bool = False) -> Predictor:
    """Build a :class:`Predictor` from a loaded :class:`medtrans.bundle.Bundle` (its mode's checks first)."""
    g = bundle.generator().to(device)
    window = tuple(bundle.info["window"]) if bundle.model.spatial_dims == 3 else None
    # channels_last: 18 % less network time on the 2-core CPU (U-Net 32-256, 256x256 slices); a model of its own
    return Predictor(g, bundle.mr_normalization, bundle.model.context_slices, bundle.model.total_stride, device,
                     batch_size=batch_size, tta_flip=tta_flip, spacing=bundle.spacing, plane=bundle.model.plane,
                     window=window, overlap=bundle.model.sw_overlap,
                     channels_last=bundle.model.spatial_dims == 2 and device.type == "cpu",
                     error_calibration=bundle.info.get("error_calibration"))


@dataclass
class FusedPredictor:
    """Several trained models fused into one sCT: an ensemble of seeds, the members of a tri-planar run or of the
    folds of a cross-validation (equal weights). With ``uncertainty``: for models with an error output, the expected
    absolute error (HU) — each member's calibrated error combined with the spread between members; for older models,
    the voxelwise spread of every member's test-time passes (:data:`UNCERTAINTY_PASSES`)."""

    members: list[Predictor]

    @property
    def mr_normalization(self) -> MRNormalization:
        return self.members[0].mr_normalization

    @property
    def device(self) -> torch.device:
        return self.members[0].device

    @property
    def predicts_error(self) -> bool:
        """Whether ``uncertainty`` gives the expected absolute error (every member has the error output)."""
        return all(p.predicts_error for p in self.members)

    @property
    def calibrated(self) -> bool:
        """Whether every member's error output is calibrated on held-out cases."""
        return self.predicts_error and all(p.error_calibration for p in self.members)

    def predict(self, mr: sitk.Image, *, normalized: tuple[sitk.Image, dict] | None = None, uncertainty: bool = False,
                timings: dict[str, float] | None = None) -> tuple[sitk.Image, sitk.Image | None]:
        """The sCT (HU, float32, on the MR's grid) and, for several members or with ``uncertainty``, the map."""
        if uncertainty and self.predicts_error:
            return self._with_error(mr, normalized=normalized, timings=timings)
        if uncertainty:
            samples = [s for p in self.members for s in p.predict_passes(mr, normalized=normalized, timings=timings)]
        elif len(self.members) > 1:
            samples = [p.predict_image(mr, normalized=normalized, timings=timings) for p in self.members]
        else:
            return self.members[0].predict_image(mr, normalized=normalized, timings=timings), None
        with Stopwatch(timings)("combine"):
            return mean_and_spread(samples)

    def _with_error(self, mr: sitk.Image, *, normalized: tuple[sitk.Image, dict] | None,
                    timings: dict[str, float] | None) -> tuple[sitk.Image, sitk.Image]:
        """Members with an error output: the mean sCT and sqrt(mean calibrated error^2 + spread between members^2)."""
        results = [p.predict_with_error(mr, normalized=normalized, timings=timings) for p in self.members]
        if len(results) == 1:
            return results[0]
        with Stopwatch(timings)("combine"):
            sct, between = mean_and_spread([s for s, _ in results])
            within = np.mean(np.stack([sitk.GetArrayViewFromImage(e) for _, e in results]) ** 2, axis=0)
            error = sitk.GetImageFromArray(np.sqrt(within + sitk.GetArrayViewFromImage(between) ** 2))
            error.CopyInformation(sct)
        return sct, error
