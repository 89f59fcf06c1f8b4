"""Slice stacks (medtrans.io.slice_stacks): missing slices are found in regular, tilted and irregular stacks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medtrans.errors import DicomSeriesError
from medtrans.io.slice_stacks import missing_slices, slice_layout


def _positions(steps: list[float]) -> np.ndarray:
    return np.array([[0.0, 0.0, z] for z in np.concatenate([[0.0], np.cumsum(steps)])])


def test_a_missing_slice_is_refused_in_an_irregular_series():
    """Used to be interpolated over when the series was irregular (two runs of different spacing)."""
    irregular = [4.22] * 13 + [1.14] + [7.38] * 12  # the shared GE head CT's steps
    assert missing_slices(np.array(irregular)) is None
    slice_layout(_positions(irregular), np.array([0, 0, 1.0]), what="s", source=Path("x"))  # complete: accepted
    gap = [4.22] * 6 + [8.44] + [4.22] * 6 + [1.14] + [7.38] * 12  # one 4.22 mm slice deleted
    with pytest.raises(DicomSeriesError, match="missing 1 slice"):
        slice_layout(_positions(gap), np.array([0, 0, 1.0]), what="s", source=Path("x"))
    assert missing_slices(np.array([2.5, 2.5, 5.0, 5.0, 5.0])) is None  # a change of spacing is not a gap
    assert missing_slices(np.array([3.0, 3.0, 9.0, 3.0])) == (2, 9.0, 3.0)
