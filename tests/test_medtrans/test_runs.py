"""RunFolder (medtrans.runs): a training run's layout, ensembles' records and members."""

from __future__ import annotations

import json

import pytest

from medtrans.errors import DatasetError
from medtrans.runs import RunFolder


def test_layout_and_ensemble_members(tmp_path):
    run = RunFolder(tmp_path / "run")
    assert run.model_folders() == [run.path] and not run.is_ensemble() and run.summary() is None
    run.path.mkdir()
    run.ensemble_file.write_text(json.dumps({"members": [{"name": "m0"}, {"name": "m1"}]}))
    with pytest.raises(DatasetError, match="not trained yet: m0, m1"):
        run.model_folders()
    for m in ("m0", "m1"):
        run.member(m).bundle_dir.mkdir(parents=True)
        (run.member(m).bundle_dir / "bundle.json").write_text("{}")
    assert run.model_folders() == [run.path / "m0", run.path / "m1"]
    run.ensemble_file.write_text("{broken")
    with pytest.raises(DatasetError, match="ensemble.json cannot be read"):
        run.model_folders()
    run.append_log({"step": 1})
    run.append_log({"step": 2})
    assert [json.loads(line)["step"] for line in run.metrics_log.read_text().splitlines()] == [1, 2]
