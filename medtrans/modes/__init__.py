"""Model modes: one registry of the ways a network turns MR into CT, each owning its config checks, its training
sampler and its predictor.

==============  ========================================================================  ==========================
mode            selected by                                                                 module
==============  ========================================================================  ==========================
``axial``       ``model.spatial_dims: 2``, ``model.plane: axial`` (the default)            :mod:`.slices`
``coronal``     ``model.plane: coronal``                                                   :mod:`.slices`
``sagittal``    ``model.plane: sagittal``                                                  :mod:`.slices`
``multiplanar`` ``model.plane: all`` (``--config multiplanar``)                           :mod:`.slices`
``3d``          ``model.spatial_dims: 3`` (``--config 3d``)                                :mod:`.patches`
==============  ========================================================================  ==========================

Adding a mode is one :class:`~medtrans.modes.base.Mode` subclass (how the config selects it, its checks, its
``batch`` and ``predict``) registered here, plus a config file under ``configs/`` that selects it. Ensembles, folds
and tri-planar runs are not modes: they are several trained members fused by
:class:`medtrans.inference.FusedPredictor`.

Example:
    >>> from medtrans.config import load_config
    >>> mode_of(load_config(None).model).name, mode_of(load_config("multiplanar").model).name
    ('axial', 'multiplanar')
"""

from __future__ import annotations

from medtrans.config import Config, ModelConfig
from medtrans.errors import ConfigError
from medtrans.modes.base import Batch, BatchSource, Mode, Network
from medtrans.modes.patches import PatchMode
from medtrans.modes.slices import ALL_PLANES, PLANE_AXES, MultiPlaneMode, SliceMode, context_indices, signal_box

#: Every mode, by name (the order is the docs').
MODES: dict[str, Mode] = {m.name: m for m in (*(SliceMode(p) for p in ALL_PLANES), MultiPlaneMode(), PatchMode())}


def register(mode: Mode) -> Mode:
    """Add a mode to :data:`MODES` (its name must be new)."""
    if mode.name in MODES:
        raise ValueError(f"a mode named {mode.name!r} is registered already")
    MODES[mode.name] = mode
    return mode


def mode_of(model: ModelConfig) -> Mode:
    """The one mode ``model`` selects.

    Raises:
        ConfigError: no mode, or several, select it.
    """
    chosen = [m for m in MODES.values() if m.selects(model)]
    if len(chosen) != 1:
        what = "no mode" if not chosen else f"{len(chosen)} modes ({', '.join(m.name for m in chosen)})"
        raise ConfigError(f"model.spatial_dims={model.spatial_dims}, model.plane={model.plane!r} selects {what}; "
                          f"the modes are: {'; '.join(m.summary for m in MODES.values())}")
    return chosen[0]


def check_mode(cfg: Config) -> Mode:
    """The config's mode, after its own checks (one :class:`ConfigError` naming every problem)."""
    mode = mode_of(cfg.model)
    problems = mode.check(cfg)
    if problems:
        raise ConfigError("; ".join(problems))
    return mode


def slice_planes() -> list[str]:
    """The ``model.plane`` values of the single-plane slice modes (what ``train --planes`` accepts)."""
    return [m.plane for m in MODES.values() if isinstance(m, SliceMode)]


__all__ = ["ALL_PLANES", "MODES", "PLANE_AXES", "Batch", "BatchSource", "Mode", "MultiPlaneMode", "Network",
           "PatchMode", "SliceMode", "check_mode", "context_indices", "mode_of", "register", "signal_box",
           "slice_planes"]
