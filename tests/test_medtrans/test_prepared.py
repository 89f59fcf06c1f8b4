"""PreparedDataset (medtrans.prepared): prepare's layout read with io's checks, one clear error otherwise."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medtrans.errors import DatasetError
from medtrans.prepared import PreparedCase, PreparedDataset


def test_a_folder_that_is_not_a_prepared_dataset_is_named(tmp_path):
    with pytest.raises(DatasetError, match="manifest.json missing"):
        PreparedDataset.open(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(DatasetError, match="manifest.json cannot be read"):
        PreparedDataset.open(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"cases": []}))
    with pytest.raises(DatasetError, match="has no split"):
        PreparedDataset.open(tmp_path)


def test_cases_records_and_slices(prepared, tmp_path):
    ds = PreparedDataset.open(prepared)
    name = ds.split("train")[0]
    assert ds.record(name)["case"] == name and ds.case_splits()[name] == "train"
    ct, mask, mr = ds.case(name).arrays()
    assert ct.shape == mask.shape and mask.dtype == bool and mask.any() and mr.GetSize()[::-1] == ct.shape
    assert all(a.shape == ds.case(name).slices()[0].shape for a in ds.case(name).slices())
    with pytest.raises(DatasetError, match="not in manifest.json"):
        ds.record("nobody")
    broken = PreparedCase(tmp_path / "x")
    broken.folder.mkdir()
    for path, shape in zip(broken.slice_paths(), ((2, 4, 4), (2, 4, 4), (3, 4, 4)), strict=True):
        np.save(path, np.zeros(shape, np.float16))
    with pytest.raises(DatasetError, match="disagree in shape"):
        broken.slices()
