"""Evaluation's pieces (medtrans.evaluation.evaluate): the uncertainty-vs-error statistics and their scatter."""

from __future__ import annotations

import numpy as np

from medtrans.evaluation.evaluate import UNCERTAINTY_SCATTER, uncertainty_vs_error


def test_the_scatter_is_a_random_sample_of_the_whole_body_not_its_first_voxels():
    """Used to keep the first 20,000 voxels in raster order: the top slices only."""
    z = 60
    err = np.repeat(np.arange(z, dtype=np.float32), 64 * 64).reshape(z, 64, 64)  # error grows slice by slice
    data = {"mask": np.ones((z, 64, 64), bool), "ct": np.zeros((z, 64, 64), np.int16),
            "sct": err.astype(np.int16), "uncertainty": err + 1}
    stats, scatter = uncertainty_vs_error(data)
    assert len(scatter) == UNCERTAINTY_SCATTER < data["mask"].sum()
    assert scatter[:, 1].min() < 2 and scatter[:, 1].max() > z - 3  # from every part of the body
    assert stats["unc_spearman"] > 0.99
