"""Body masks at registration's working grids: the couch, head-rest and container walls go, the body stays."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from medtrans.data_prep.masks import ct_body, mr_body


def _image(arr: np.ndarray, spacing: float = 2.0) -> sitk.Image:
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((spacing,) * 3)
    return img


def test_a_couch_touching_the_body_and_a_container_wall_are_cut_off():
    _z, y, x = np.mgrid[:40, :80, :80]
    body = ((x - 40) / 25.0) ** 2 + ((y - 35) / 20.0) ** 2 < 1
    arr = np.where(body, 40, -1000).astype(np.int16)
    arr[:, 56:58, 5:75] = 600  # a 4 mm couch plate ...
    arr[:, 55, 38:42] = 100  # ... touching the body through a thin pad
    wall = (np.abs(np.hypot(x - 40, y - 35) - 33) < 1) & (y < 55)  # a 2-voxel container wall around the body
    arr[wall] = 200
    mask = sitk.GetArrayViewFromImage(ct_body(_image(arr))) > 0
    assert not mask[:, 56:58].any(), "the couch is not body"
    assert not mask[wall].any(), "the container wall is not body"
    assert mask[body].mean() > 0.97


def test_the_mr_body_bridges_the_dark_skull_and_keeps_the_brain():
    _z, y, x = np.mgrid[:40, :80, :80]
    r = np.hypot((x - 40) / 30.0, (y - 40) / 34.0)
    arr = np.zeros((40, 80, 80), np.float32)
    arr[r < 1.0] = 600.0  # scalp
    arr[r < 0.9] = 5.0  # skull: as dark as air in T1
    arr[r < 0.8] = 400.0  # brain
    arr += np.abs(np.random.default_rng(0).normal(0, 5, arr.shape)).astype(np.float32)
    mask = sitk.GetArrayViewFromImage(mr_body(_image(arr))) > 0
    assert mask[r < 0.95].mean() > 0.98 and not mask[r > 1.15].any()
