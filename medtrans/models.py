"""Networks from MONAI: a UNet generator (2D slices or 3D patches) with a plain head, and a conditional PatchGAN
discriminator of the same dimensionality.

Why the head: with ``num_res_units > 0`` MONAI's UNet ends in a transposed convolution followed by a
normalization layer (``model.norm``: batch norm by default, or instance norm) and an activation. With one
output channel that last layer would normalize the output itself (per slice with instance norm, to the
batch's statistics with batch norm), so absolute HU levels could not be learned reliably. The UNet therefore
emits ``head_features`` channels and a 1x1 convolution maps them to CT, its bias starting at the background
(air) value.
"""

from __future__ import annotations

import math

import torch
from monai.networks.nets import PatchDiscriminator, UNet
from torch import nn

from medtrans.config import ModelConfig
from medtrans.intensity import CT_BACKGROUND

#: The error output is log(b), b the Laplace scale = the expected |error| in normalized CT units (1 unit = 2012 HU):
#: clamped to [e^-9, e^0] (0.25 HU to 2012 HU) so that the likelihood cannot run away; it starts at 100 HU, about
#: what a model errs on a new patient (a start far from it costs the head most of a short training).
LOG_ERROR_RANGE = (-9.0, 0.0)
INITIAL_ERROR = 0.05


class Generator(nn.Module):
    """MR (``context_slices`` channels; one channel of a 3D patch) -> normalized CT in (-1, 1)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.unet = UNet(
            spatial_dims=cfg.spatial_dims, in_channels=cfg.context_slices, out_channels=cfg.head_features,
            channels=tuple(cfg.channels), strides=tuple(cfg.strides), num_res_units=cfg.num_res_units,
            norm=cfg.norm.upper(),
        )
        conv = nn.Conv3d if cfg.spatial_dims == 3 else nn.Conv2d
        self.head = conv(cfg.head_features, 1, kernel_size=1)
        nn.init.normal_(self.head.weight, std=1e-3)
        # tanh(bias) = slightly above -1: the untrained network predicts air, not mid-grey
        nn.init.constant_(self.head.bias, math.atanh(CT_BACKGROUND * 0.95))
        self.error_head = None
        if cfg.predict_error:  # a 3x3 convolution first: where the error is depends on the neighbourhood (edges)
            f = cfg.head_features
            self.error_head = nn.Sequential(conv(f, f, kernel_size=3, padding=1), nn.LeakyReLU(0.2),
                                            conv(f, 1, kernel_size=1))
            nn.init.normal_(self.error_head[2].weight, std=1e-3)
            nn.init.constant_(self.error_head[2].bias, math.log(INITIAL_ERROR))

    @property
    def out_channels(self) -> int:
        """1 (the normalized CT) or 2 (also the log of the expected absolute error, :data:`LOG_ERROR_RANGE`)."""
        return 1 if self.error_head is None else 2

    def forward(self, mr: torch.Tensor) -> torch.Tensor:
        features = self.unet(mr)
        ct = torch.tanh(self.head(features))
        if self.error_head is None:
            return ct
        return torch.cat([ct, self.error_head(features).clamp(*LOG_ERROR_RANGE)], dim=1)


class Discriminator(nn.Module):
    """PatchGAN conditioned on the MR: input is MR and CT channels concatenated; returns patch logits."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        # Instance norm makes one forward over real and fake pairs equal to two separate ones.
        self.net = PatchDiscriminator(
            spatial_dims=cfg.spatial_dims, channels=cfg.disc_channels, in_channels=cfg.context_slices + 1,
            out_channels=1,
            num_layers_d=cfg.disc_layers, norm="INSTANCE",
        )

    def forward(self, mr: torch.Tensor, ct: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([mr, ct], dim=1))[-1]
