"""What a model mode is: how it is chosen from the config, which config it accepts, how training samples are cut for
it, and how it predicts a volume. Every mode is one :class:`Mode` subclass registered in :mod:`medtrans.modes`."""

from __future__ import annotations

import abc
from typing import Any, Protocol

import numpy as np
import torch

from medtrans.config import Config, ModelConfig

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class BatchSource(Protocol):
    """What a mode's sampler reads from the training stream (:class:`medtrans.training.data.BatchStream`)."""

    bank: Any
    batch_size: int
    crop: int
    flip: bool
    bias_field: float

    def draws(self, step: int, n_uniform: int) -> tuple[torch.Tensor, torch.Generator, torch.Tensor, torch.Tensor]:
        ...


class Network(Protocol):
    """What a mode's predictor runs on (:class:`medtrans.inference.Predictor`)."""

    generator: torch.nn.Module
    device: torch.device
    batch_size: int
    context_slices: int
    stride: int
    window: tuple[int, int, int] | None
    overlap: float
    channels_last: bool
    crop_to_signal: bool


def output_channels(net: Network) -> int:
    """The generator's outputs: 1 (the normalized CT) or 2 (also the log expected error, :mod:`medtrans.models`)."""
    return int(getattr(net.generator, "out_channels", 1))


class Mode(abc.ABC):
    """One way of turning MR into CT with a network: the unit a new kind of model is added as.

    Attributes:
        name: the registry key (``medtrans.modes.MODES``), shown in docs and errors.
        summary: one line for the docs and the CLI.
        cut_note: how inputs are cut for the network, whatever their acquisition orientation (shown in the
            ``orientation_unseen`` flag).
    """

    name: str = ""
    summary: str = ""
    cut_note: str = ""

    @abc.abstractmethod
    def selects(self, model: ModelConfig) -> bool:
        """True when ``model`` (``model.spatial_dims``, ``model.plane``) asks for this mode."""

    def check(self, cfg: Config) -> list[str]:
        """What is wrong with ``cfg`` for this mode (empty: nothing)."""
        return []

    def sample_shape(self, model: ModelConfig, crop: int) -> tuple[int, ...]:
        """One training sample's shape without the batch axis."""
        return (model.context_slices, crop, crop)

    def window(self, cfg: Config) -> tuple[int, int, int] | None:
        """The inference window of a patch model (None: whole slices)."""
        return None

    @abc.abstractmethod
    def batch(self, stream: BatchSource, step: int) -> Batch:
        """Training batch ``step``: (MR, CT, mask) float32 tensors on the bank's device."""

    @abc.abstractmethod
    def predict(self, net: Network, volume: np.ndarray, background: float) -> np.ndarray:
        """(Z, H, W) normalized canonical MR -> (C, Z, H, W) prediction (float32): the normalized CT, then the log
        expected error where the generator has that output (:func:`output_channels`)."""
