"""The predicted error's calibration (medtrans.calibration), the error output in training and convert, and bundles
from before the error output."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import rewrite_bundle_weights

from medtrans.calibration import _monotone, apply_calibration, calibration_error, fit_calibration
from medtrans.training.step import laplace_nll


def test_pool_adjacent_violators_gives_the_closest_monotone_sequence():
    np.testing.assert_allclose(_monotone(np.array([1.0, 3.0, 2.0, 4.0]), np.ones(4)), [1, 2.5, 2.5, 4])
    np.testing.assert_allclose(_monotone(np.array([5.0, 1.0]), np.array([1.0, 3.0])), [2, 2])


def test_an_understated_map_is_calibrated_on_other_held_out_voxels_per_tissue_band():
    """Soft tissue errs 2x the map, bone 5x (the network's own estimate learned on training cases): fitted on one
    sample, the curve makes a fresh sample's map say what its error is, band by band."""
    rng = np.random.default_rng(1)

    def sample(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        sct = np.where(rng.random(n) < 0.3, 900.0, 40.0)
        predicted = rng.uniform(5, 60, n)
        error = np.where(sct > 300, 5.0, 2.0) * predicted * rng.exponential(1.0, n)
        return predicted, error, sct

    table = fit_calibration(*sample(50_000))
    predicted, error, sct = sample(50_000)
    before, _ = calibration_error(predicted, error)
    after, _ = calibration_error(apply_calibration(predicted, sct, table), error)
    print(f"calibration error {before:.2f} -> {after:.2f}")
    assert before > 0.5 and after < 0.05
    bone = sct > 300
    assert apply_calibration(predicted, sct, table)[bone].mean() == pytest.approx(error[bone].mean(), rel=0.05)
    beyond = apply_calibration(np.array([200.0]), np.array([40.0]), table)  # past the last knot: its ratio
    assert beyond[0] == pytest.approx(2 * 200, rel=0.15)
    np.testing.assert_array_equal(apply_calibration(predicted, sct, None), predicted.astype(np.float32))  # no table


def test_a_band_with_too_few_voxels_uses_the_curve_of_all():
    rng = np.random.default_rng(2)
    predicted = rng.uniform(1, 10, 10_000)
    sct = np.zeros(predicted.size)
    sct[:100] = 1000.0  # 100 bone voxels: under MIN_BAND_SAMPLES
    table = fit_calibration(predicted, predicted * 3, sct)
    assert table["bands"]["bone"] is None and table["bands"]["soft"] is not None
    out = apply_calibration(np.array([5.0, 5.0]), np.array([1000.0, 0.0]), table)
    assert out[0] == pytest.approx(15.0, rel=0.05) and out[1] == pytest.approx(15.0, rel=0.05)


def test_the_error_outputs_likelihood_trains_the_scale_to_the_absolute_error_and_never_the_sct():
    fake = torch.zeros(1, 1, 8, 8, requires_grad=True)
    real = torch.full((1, 1, 8, 8), 0.3)
    log_b = torch.full((1, 1, 8, 8), np.log(0.1), requires_grad=True)
    laplace_nll(log_b, fake, real, None).backward()
    assert fake.grad is None or torch.all(fake.grad == 0)  # the sCT is detached
    assert torch.all(log_b.grad < 0)  # b = 0.1 < |error| = 0.3: the likelihood raises b
    log_b = torch.full((1, 1, 8, 8), np.log(0.3), requires_grad=True)
    laplace_nll(log_b, fake.detach(), real, None).backward()
    assert torch.allclose(log_b.grad, torch.zeros_like(log_b.grad), atol=1e-6)  # its optimum: b = |error|


def test_a_bundle_from_before_the_error_output_still_converts_with_its_spread_map(tiny_run, prepared, tmp_path):
    from medtrans.convert import convert_cohort

    old = tmp_path / "old_bundle"
    shutil.copytree(tiny_run / "bundle", old)
    state = {k: v for k, v in torch.load(old / "model.pt", weights_only=True).items()
             if not k.startswith("error_head.")}
    meta = json.loads((old / "bundle.json").read_text())
    del meta["model"]["predict_error"]  # as written before the field existed
    meta.pop("error_calibration", None)
    (old / "bundle.json").write_text(json.dumps(meta))
    rewrite_bundle_weights(old, state)
    res = [r for r in convert_cohort(old, prepared, tmp_path / "sct", device="cpu", progress=False,
                                     uncertainty=True) if r["status"] != "orphaned"]
    assert res and all(r["status"] == "ok" for r in res), res
    assert res[0]["uncertainty"]["kind"] == "spread of test-time passes"
    new = convert_cohort(tiny_run, prepared, tmp_path / "sct_new", device="cpu", progress=False, uncertainty=True)
    rec = new[0]["uncertainty"]
    assert rec["kind"] == "predicted absolute error" and rec["calibrated"]  # tiny_run validates: calibrated
    bundle = json.loads((tiny_run / "bundle" / "bundle.json").read_text())
    assert bundle["error_calibration"]["cases"] == len(bundle["split"]["val"]) > 0
    raw = tmp_path / "uncalibrated"  # a run without validation cases has no calibration, and says so
    shutil.copytree(tiny_run / "bundle", raw)
    meta = json.loads((raw / "bundle.json").read_text())
    meta["error_calibration"] = None
    (raw / "bundle.json").write_text(json.dumps(meta))
    rec = convert_cohort(raw, prepared, tmp_path / "sct_raw", device="cpu", progress=False, uncertainty=True,
                         cases=[new[0]["case"]])[0]["uncertainty"]
    assert not rec["calibrated"] and "not calibrated" in rec["unit"]


def test_a_run_saved_before_the_error_output_resumes(prepared, tmp_path):
    """Its saved config and checkpoint lack the new keys; they read as the run was trained (no error output)."""
    import yaml
    from conftest import TINY

    from medtrans.config import load_config
    from medtrans.training.checkpoint import saved_config
    from medtrans.training.trainer import train

    run = tmp_path / "run"
    cfg = load_config(None, overrides=[*TINY, "model.predict_error=false", "train.max_steps=4"])
    train(prepared, run, cfg, stop_step=2, device="cpu", progress=False)
    old = yaml.safe_load((run / "config.yaml").read_text())
    for section, key in (("model", "predict_error"), ("train", "error_weight")):
        del old[section][key]
    (run / "config.yaml").write_text(yaml.safe_dump(old))
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    saved = json.loads(state["config_json"])
    del saved["model"]["predict_error"], saved["train"]["error_weight"]
    state["config_json"] = json.dumps(saved)
    torch.save(state, run / "checkpoints" / "last.pt")
    resumed_cfg = load_config(None, base=saved_config(run))  # what `train --resume` builds
    assert resumed_cfg.model.predict_error is False
    summary = train(prepared, run, resumed_cfg, resume=True, device="cpu", progress=False)
    assert summary["step"] == 4
