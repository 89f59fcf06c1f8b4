"""Ensembles and tri-planar runs (medtrans.training.ensemble): members in any mode, resume to a later step, one
writer of the run's records under torchrun, and the members' checks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY

from medtrans.bundle import load_bundle
from medtrans.config import load_config
from medtrans.convert import convert_cohort
from medtrans.errors import DatasetError, MedtransError
from medtrans.runs import RunFolder
from medtrans.training.ensemble import ensemble_members, train_ensemble

ROOT = Path(__file__).resolve().parents[2]


def test_a_multiplanar_ensemble_trains_and_converts(prepared, tmp_path):
    """Used to fail: '--planes: unknown plane(s) all' for any ensemble of a multi-planar config."""
    cfg = load_config("multiplanar", overrides=[*TINY, "train.max_steps=3", "train.val_every=1000"])
    summary = train_ensemble(prepared, tmp_path / "run", cfg, ensemble=2, device="cpu", progress=False)
    assert [m["member"] for m in summary["members"]] == ["member0_multiplanar", "member1_multiplanar"]
    res = convert_cohort(tmp_path / "run", prepared / "phantom_000" / "mr.nii.gz", tmp_path / "sct", device="cpu",
                         progress=False)
    assert res[0]["status"] == "ok" and res[0]["models"] == 2


def test_resume_with_a_later_stop_trains_every_member_on(prepared, tmp_path):
    """Used to stay at step 4: a member counted as finished once it had a summary."""
    cfg = load_config(None, overrides=[*TINY, "train.max_steps=40", "train.val_every=1000"])
    train_ensemble(prepared, tmp_path / "run", cfg, ensemble=2, stop_step=4, device="cpu", progress=False)
    summary = train_ensemble(prepared, tmp_path / "run", cfg, stop_step=8, resume=True, device="cpu", progress=False)
    assert [m["step"] for m in summary["members"]] == [8, 8]
    for m in ("member0_axial", "member1_axial"):
        assert torch.load(RunFolder(tmp_path / "run").member(m).checkpoint, weights_only=True)["step"] == 8
    again = train_ensemble(prepared, tmp_path / "run", cfg, stop_step=8, resume=True, device="cpu", progress=False)
    assert [m["step"] for m in again["members"]] == [8, 8]  # reached: kept as they are


def test_members_are_checked_and_a_resume_keeps_them(prepared, tmp_path):
    cfg = load_config(None, overrides=TINY)
    with pytest.raises(MedtransError, match="names a plane twice"):
        ensemble_members(cfg, ensemble=1, planes=["axial", "axial"], seed=0)
    with pytest.raises(MedtransError, match="unknown plane"):
        ensemble_members(cfg, ensemble=1, planes=["all"], seed=0)
    small = load_config(None, overrides=[*TINY, "train.max_steps=2", "train.val_every=1000"])
    train_ensemble(prepared, tmp_path / "run", small, ensemble=2, device="cpu", progress=False)
    with pytest.raises(MedtransError, match=r"keeps the run's 2 member\(s\).*cannot change them"):
        train_ensemble(prepared, tmp_path / "run", small, ensemble=3, resume=True, device="cpu", progress=False)
    # a member's weights swapped for another's are refused, not loaded silently
    run = RunFolder(tmp_path / "run")
    (run.member("member0_axial").bundle_dir / "model.pt").write_bytes(
        (run.member("member1_axial").bundle_dir / "model.pt").read_bytes())
    with pytest.raises(DatasetError, match="does not belong to this bundle.json"):
        convert_cohort(run.path, prepared / "phantom_000" / "mr.nii.gz", tmp_path / "sct", device="cpu",
                       progress=False)


def test_an_ensemble_under_torchrun_writes_its_records_once(prepared, tmp_path):
    """Used to fail on one rank: every rank claimed the folder and wrote or refused ensemble.json."""
    env = {**os.environ, "MEDTRANS_DDP_BACKEND": "gloo", "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29537",
            str(ROOT / "tests" / "test_medtrans" / "ddp_ensemble_worker.py"), str(prepared), str(tmp_path / "run"),
            json.dumps(TINY)]
    r = subprocess.run(args, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    run = RunFolder(tmp_path / "run")
    assert [m["name"] for m in run.ensemble_record()["members"]] == ["member0_axial", "member1_axial"]
    assert all(f.is_dir() for f in run.model_folders())


def test_three_folds_give_three_models_out_of_fold_scts_for_every_case_and_resume_bit_exactly(prepared, tmp_path):
    """``train --folds 3`` on the phantoms: every case is held out by exactly one fold and gets that fold's sCT;
    evaluate scores all of them; a fold stopped and resumed ends with the weights of an uninterrupted one."""
    from medtrans.evaluation.evaluate import evaluate
    from medtrans.prepared import PreparedDataset

    cfg = load_config(None, overrides=[*TINY, "train.max_steps=6", "train.val_every=1000"])
    straight = train_ensemble(prepared, tmp_path / "straight", cfg, folds=3, device="cpu", progress=False)
    record = json.loads((tmp_path / "straight" / "ensemble.json").read_text())
    folds = [m["split"]["val"] for m in record["members"]]
    cases = sorted(c for part in ("train", "val", "test") for c in PreparedDataset.open(prepared).split(part))
    assert len(folds) == 3 and sorted(c for f in folds for c in f) == cases  # a partition of the cohort
    for m in record["members"]:
        assert not set(m["split"]["train"]) & set(m["split"]["val"])
        bundle = json.loads((tmp_path / "straight" / m["name"] / "bundle" / "bundle.json").read_text())
        assert bundle["split"]["val"] == m["split"]["val"]  # the bundle records the fold it was trained on
    assert straight["out_of_fold"]["cases"] == len(cases) and not straight["out_of_fold"]["failed"]
    oof = tmp_path / "straight" / "oof"
    for fold, m in zip(folds, record["members"], strict=True):
        for case in fold:
            sct_json = json.loads((oof / case / "sct.json").read_text())
            assert sct_json["bundle_sha256"] == load_bundle(tmp_path / "straight" / m["name"]).hash()
            assert (oof / case / "sct_uncertainty.nii.gz").is_file()
    summary = evaluate(oof, prepared, tmp_path / "eval", split="all", progress=False, report=False)
    assert summary["n_evaluated"] == len(cases) and not summary["problems"]
    assert summary["metrics"]["pred_mae"]["n"] == len(cases)  # each case's predicted MAE beside the measured

    train_ensemble(prepared, tmp_path / "resumed", cfg, folds=3, stop_step=3, device="cpu", progress=False)
    train_ensemble(prepared, tmp_path / "resumed", cfg, resume=True, device="cpu", progress=False)
    for m in record["members"]:
        a = torch.load(tmp_path / "straight" / m["name"] / "checkpoints" / "last.pt", weights_only=True)
        b = torch.load(tmp_path / "resumed" / m["name"] / "checkpoints" / "last.pt", weights_only=True)
        assert all(torch.equal(a["generator"][k], v) for k, v in b["generator"].items()), m["name"]
    with pytest.raises(MedtransError, match="does not combine with --ensemble"):
        train_ensemble(prepared, tmp_path / "bad", cfg, folds=3, ensemble=2, device="cpu", progress=False)
    with pytest.raises(MedtransError, match="only 4 case"):
        train_ensemble(prepared, tmp_path / "bad2", cfg, folds=5, device="cpu", progress=False)
