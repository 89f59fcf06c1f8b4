"""Case discovery (medtrans.cohort): series folders reached through symbolic links, bad series patterns."""

from __future__ import annotations

import os

import pytest

from medtrans.cohort import discover
from medtrans.errors import InputError
from medtrans.phantom import make_case


def test_a_series_folder_linked_into_a_case_is_found(tmp_path):
    """Used to be ignored silently: the recursive scan did not follow symbolic links to folders."""
    make_case(tmp_path / "store" / "p1", seed=3, aligned=False, fmt="dicom")
    case = tmp_path / "cohort" / "p1"
    case.mkdir(parents=True)
    os.symlink(tmp_path / "store" / "p1" / "mr", case / "mr_series")
    os.symlink(tmp_path / "store" / "p1" / "ct", case / "ct_series")
    found = discover(tmp_path / "cohort")
    assert len(found) == 1 and not found[0].errors, found[0].errors
    assert found[0].mr is not None and found[0].ct is not None
    os.symlink(case, case / "loop")  # a link cycle is followed once, not forever
    assert discover(tmp_path / "cohort")[0].mr is not None


def test_an_invalid_series_pattern_is_one_clear_error(tmp_path):
    make_case(tmp_path / "c" / "p1", seed=3, aligned=False, fmt="dicom")
    for bad in ("T1[", "(T1"):
        with pytest.raises(InputError, match=r"--mr-series .*not a valid regular expression"):
            discover(tmp_path / "c", mr_series=bad)
