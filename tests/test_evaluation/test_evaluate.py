"""Evaluation's pieces (medtrans.evaluation.evaluate): the uncertainty-vs-error statistics and their scatter."""

from __future__ import annotations

import numpy as np
import pytest

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


def test_the_trust_summary_says_how_well_the_maps_predict_the_error():
    from medtrans.evaluation.evaluate import trust_summary

    rng = np.random.default_rng(0)
    map_ = rng.uniform(10, 100, 20_000)
    honest = np.stack([map_, map_ * rng.exponential(1.0, map_.size)], axis=1)  # the map is the expected |error|
    halved = np.stack([map_ / 2, honest[:, 1]], axis=1)  # a map that says half the error
    rows = [{"mae": m, "pred_mae": p} for m, p in ((50, 40), (80, 70), (60, 55), (120, 90))]
    good, bad = trust_summary(rows, [honest]), trust_summary(rows, [halved])
    assert good["voxel_calibration_error"] < 0.05 < 0.45 < bad["voxel_calibration_error"] < 0.55
    assert good["case_spearman"] == 1.0 and good["cases"] == 4
    assert good["case_mean_predicted_over_measured"] == pytest.approx(255 / 310)
    assert trust_summary(rows[:2], [])["case_spearman"] is None  # under three cases: no correlation


def test_split_all_is_the_cases_of_the_splits_not_those_prepare_excluded(prepared, tmp_path):
    import json
    import shutil

    from medtrans.evaluation.evaluate import pair_cases

    ref = tmp_path / "prep"
    shutil.copytree(prepared, ref)
    manifest = json.loads((ref / "manifest.json").read_text())
    excluded = manifest["split"]["train"].pop(0)  # as prepare leaves a case its registration QA excluded
    (ref / "manifest.json").write_text(json.dumps(manifest))
    scored = {p["case"] for p in pair_cases(tmp_path / "sct", ref, split="all")}
    in_splits = {c for cases in manifest["split"].values() for c in cases}
    assert scored == in_splits and excluded not in scored and (ref / excluded).is_dir()
