"""Registration's working grids: each image resampled once onto each level's grid (in millimetres), the bodies found
on the finest (the CT's couch, head-rest, immobilization mask or container removed), and the metric's fixed mask.

A clinical CT of 512x512x400 voxels at 0.4 mm costs what a 128x128x100 one does: every later step of registration
works on these grids, whose size is set by the field of view and the levels, not by the scan.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import SimpleITK as sitk

from medtrans.config import PrepareConfig
from medtrans.data_prep.masks import ct_body, mr_body
from medtrans.data_prep.start_search import Body
from medtrans.errors import GeometryError, InputError
from medtrans.geometry import downsample_onto, level_grid, same_grid
from medtrans.intensity import AIR_HU

#: The start search works on its own coarse level (mm; never finer than the pyramid's coarsest), where every start
#: costs little and the capture range is wide.
SEARCH_MM = 8.0
#: The MR body is dilated by this much for the metric's fixed mask: the skin edge is the most telling contrast.
FIXED_MASK_MARGIN_MM = 4.0
#: A level grid needs at least this many voxels along every axis.
MIN_LEVEL_VOXELS = 4


@dataclass
class Level:
    """One pyramid level: both images on their working grids, and the metric's fixed mask."""

    mm: float
    fixed: sitk.Image
    moving: sitk.Image
    fixed_mask: sitk.Image
    mask_voxels: int
    threads: int = 1  #: threads of the metric (1: bit-reproducible)

    def sampling(self, samples: int) -> float:
        """The sampling fraction that puts ``samples`` random samples inside the fixed mask."""
        return float(min(1.0, samples / max(1, self.mask_voxels)))


@dataclass
class Pyramid:
    """Both images on every level's working grid (coarse to fine), with their bodies, built once per case."""

    levels: list[Level]
    search: Level
    fixed_body_mask: sitk.Image  #: the MR body on the finest level's grid
    moving_body_mask: sitk.Image  #: the couch-free CT body on the CT's finest working grid
    fixed_body: Body
    moving_body: Body
    seconds: float

    @property
    def finest(self) -> Level:
        return self.levels[-1]


def require_registrable(image: sitk.Image, levels_mm: list[float], *, role: str, source: Any = None) -> None:
    """Refuse an image too small for the pyramid's coarsest grid (ITK's metric fails on it without a word why)."""
    grid = level_grid(image, max(levels_mm))
    if min(grid.GetSize()) < MIN_LEVEL_VOXELS:
        raise InputError(f"the {role} image is too small to register: {'x'.join(map(str, image.GetSize()))} voxels "
                         f"are {'x'.join(map(str, grid.GetSize()))} on the {max(levels_mm):g} mm level; prepare needs "
                         f"at least {MIN_LEVEL_VOXELS} per axis (see prepare.registration_levels_mm)", path=source)


def _masked(image: sitk.Image, mask: sitk.Image, outside: float) -> sitk.Image:
    arr = np.where(sitk.GetArrayViewFromImage(mask) > 0, sitk.GetArrayViewFromImage(image), np.float32(outside))
    out = sitk.GetImageFromArray(arr.astype(np.float32, copy=False))
    out.CopyInformation(image)
    return out


def _dilate(mask: sitk.Image, mm: float) -> sitk.Image:
    return sitk.BinaryDilate(mask, [max(1, round(mm / s)) for s in mask.GetSpacing()], sitk.sitkBall)


def build_pyramid(mr: sitk.Image, ct: sitk.Image, cfg: PrepareConfig) -> Pyramid:
    """Resample MR and CT once onto each level's grid; find the MR body and the couch-free CT body on the finest."""
    t0 = time.perf_counter()
    levels_mm = sorted(cfg.registration_levels_mm, reverse=True)
    fine = levels_mm[-1]
    fixed = downsample_onto(mr, level_grid(mr, fine))
    moving = downsample_onto(ct, level_grid(ct, fine), default=AIR_HU)
    fixed = sitk.Maximum(fixed, 0.0)  # magnitude MR is non-negative; negatives are reconstruction artefacts
    f_body, m_body = mr_body(fixed), ct_body(moving)
    if not sitk.GetArrayViewFromImage(f_body).any() or not sitk.GetArrayViewFromImage(m_body).any():
        raise GeometryError("MR or CT has no body voxels to register (blank image?)")
    moving = _masked(moving, _dilate(m_body, 2.0), AIR_HU)  # the couch and positioning aids go
    fixed_mask = _dilate(f_body, FIXED_MASK_MARGIN_MM)
    threads = cfg.registration_threads or sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    levels = [_level(mm, fixed, moving, fixed_mask, threads) for mm in [max(SEARCH_MM, levels_mm[0]), *levels_mm]]
    seed = cfg.registration_seed
    return Pyramid(levels[1:], levels[0], f_body, m_body, Body.of(f_body, seed=seed), Body.of(m_body, seed=seed),
                   time.perf_counter() - t0)


def _level(mm: float, fixed: sitk.Image, moving: sitk.Image, fixed_mask: sitk.Image, threads: int) -> Level:
    """A level made from the finest working images (the scan itself is resampled only once)."""
    f = downsample_onto(fixed, level_grid(fixed, mm))
    m = downsample_onto(moving, level_grid(moving, mm), default=AIR_HU)
    mask = sitk.Resample(fixed_mask, f, sitk.Transform(), sitk.sitkNearestNeighbor) if not same_grid(f, fixed) \
        else fixed_mask
    return Level(mm, f, m, mask, int(sitk.GetArrayViewFromImage(mask).sum()), threads)


@contextmanager
def sitk_threads(threads: int) -> Iterator[None]:
    """Run SimpleITK with ``threads`` threads by default (0: leave the setting), restoring it after.

    The process-wide default, not only the registration method's own setting, decides how Mattes MI splits its sums
    (measured: with 2 default threads the transform differs in the 9th digit between runs).
    """
    if threads <= 0:
        yield
        return
    previous = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(previous)
