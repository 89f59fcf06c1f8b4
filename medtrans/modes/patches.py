"""3D patch models: MONAI 3D U-Net on random body patches, MONAI's sliding-window inference with Gaussian blending
(``model.spatial_dims: 3``, ``--config 3d``)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from medtrans.config import Config, ModelConfig
from medtrans.modes.base import Batch, BatchSource, Mode, Network
from medtrans.modes.volumes import volume_batch


class PatchMode(Mode):
    """Patches of ``model.patch_depth`` slices by ``train.crop_size``², predicted by sliding windows of that size."""

    name = "3d"
    summary = "3D patch model, sliding-window inference (model.spatial_dims=3)"
    cut_note = "3D patches are cut in the canonical orientation either way"

    def selects(self, model: ModelConfig) -> bool:
        return model.spatial_dims == 3

    def check(self, cfg: Config) -> list[str]:
        problems = []
        if cfg.model.context_slices != 1 or cfg.model.plane != "axial":
            problems.append("a 3D model (model.spatial_dims=3) takes model.context_slices=1 and model.plane=axial "
                            "(its patches are volumes; --config 3d sets both)")
        stride = cfg.model.total_stride
        if cfg.model.patch_depth % stride:
            problems.append(f"model.patch_depth must be divisible by the UNet's total stride {stride}")
        return problems

    def sample_shape(self, model: ModelConfig, crop: int) -> tuple[int, ...]:
        return (1, model.patch_depth, crop, crop)

    def window(self, cfg: Config) -> tuple[int, int, int]:
        return (cfg.model.patch_depth, cfg.train.crop_size, cfg.train.crop_size)

    def batch(self, stream: BatchSource, step: int) -> Batch:
        return volume_batch(stream, step, plane="axial", depth=stream.depth)

    def predict(self, net: Network, volume: np.ndarray, background: float) -> np.ndarray:
        """MONAI's sliding-window inference over the volume (padded with the MR background to at least a window)."""
        from monai.inferers import sliding_window_inference

        shape = volume.shape
        pads = [max(0, win - n) for win, n in zip(net.window, shape, strict=True)]
        vol = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))
        if any(pads):  # F.pad takes the last axis first
            vol = F.pad(vol, [p for n in reversed(pads) for p in (n // 2, n - n // 2)], value=float(background))
        with torch.autocast(net.device.type, dtype=torch.bfloat16, enabled=net.device.type == "cuda"):
            y = sliding_window_inference(vol[None, None].to(net.device), roi_size=net.window,
                                         sw_batch_size=net.batch_size, predictor=net.generator,
                                         overlap=net.overlap, mode="gaussian", padding_mode="replicate")
        y = y[0].float()
        crop = tuple(slice(p // 2, p // 2 + n) for p, n in zip(pads, shape, strict=True))
        return y[(slice(None), *crop)].cpu().numpy()
