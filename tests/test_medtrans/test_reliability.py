"""Reliability, round two: every new input path refuses garbage with one clear line, and no two runs can silently
overwrite each other (each class of the bad-input campaign, made here from phantoms)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest
import SimpleITK as sitk
import torch
from conftest import TINY

from medtrans.config import load_config
from medtrans.convert import convert_cohort
from medtrans.errors import ConfigError, DatasetError, DicomSeriesError, OutputError
from medtrans.output_dirs import LOCK, claim_output_dir, release_output_dir
from medtrans.phantom import make_case

ROOT = Path(__file__).resolve().parents[2]
TINY_SETS = [x for t in TINY for x in ("--set", t)]


def cli(*args: str, timeout: int = 600, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medtrans", *args], capture_output=True, text=True,
                          timeout=timeout, **kwargs)


def one_line_error(r: subprocess.CompletedProcess) -> str:
    """The run failed with status 2 and one line on stderr, no traceback."""
    assert r.returncode == 2, (r.returncode, r.stdout[-1000:], r.stderr[-2000:])
    assert "Traceback" not in r.stderr and r.stderr.strip().count("\n") == 0, r.stderr
    return r.stderr


# ------------------------------------------------------------------------------------------------ configs


@pytest.mark.parametrize("value", ["[1", "!!python/object/apply:os.system [echo]"])
def test_yaml_errors_in_set_values_are_one_line(value):
    """Used to end in a traceback (the same typo in a --config file got a clean error)."""
    err = one_line_error(cli("train", "--data", "x", "--out", "y", "--set", f"train.betas={value}"))
    assert "--set train.betas=" in err and "not valid YAML" in err


@pytest.mark.parametrize("spacing", ["[0.01,0.01]", "[1000,1000]"])
def test_prepare_spacing_is_checked_before_any_work(spacing):
    """Used to fail after registration with a raw allocation error, or 'no slice contains any body'."""
    with pytest.raises(ConfigError, match="prepare.spacing .* between 0.1 and 20.0 mm"):
        load_config(None, overrides=[f"prepare.spacing={spacing}"])


# ------------------------------------------------------------------------------------------------ DICOM


def test_enhanced_files_with_a_frame_out_of_place_are_refused(prepared, tmp_path):
    """Used to convert 'ok' on an invented 1x1x1 mm grid when one frame lacked its plane position; a file whose
    per-frame groups do not match its frames was accepted and described wrongly."""
    from test_scanner_cohorts import enhanced_mr

    src = sitk.Cast(sitk.ReadImage(str(prepared / "phantom_000" / "mr.nii.gz")), sitk.sitkUInt16)
    enhanced_mr(src, tmp_path / "good.dcm")
    ds = pydicom.dcmread(tmp_path / "good.dcm")
    del ds.PerFrameFunctionalGroupsSequence[3].PlanePositionSequence
    ds.save_as(tmp_path / "no_position.dcm")
    ds = pydicom.dcmread(tmp_path / "good.dcm")
    del ds.PerFrameFunctionalGroupsSequence[-1]
    ds.save_as(tmp_path / "few_groups.dcm")
    from medtrans.io import read_volume

    with pytest.raises(DicomSeriesError, match="frame 4 of .* has no plane position"):
        read_volume(tmp_path / "no_position.dcm")
    with pytest.raises(DicomSeriesError, match=r"per-frame functional group\(s\) for .* frame"):
        read_volume(tmp_path / "few_groups.dcm")


# ------------------------------------------------------------------------------------------------ training


def test_resume_onto_another_prepared_dataset_is_refused(prepared, tmp_path):
    """Used to be accepted, and the bundle then claimed the new settings for weights trained on the old."""
    from medtrans.training.trainer import train

    cfg = load_config(None, overrides=[*TINY, "train.max_steps=4", "train.val_every=1000"])
    train(prepared, tmp_path / "run", cfg, stop_step=2, device="cpu", progress=False)
    other = tmp_path / "other_prep"
    shutil.copytree(prepared, other)
    manifest = (other / "manifest.json").read_text().replace('"mr_norm": "percentile"', '"mr_norm": "zscore"')
    (other / "manifest.json").write_text(manifest)
    with pytest.raises(DatasetError, match="another prepared dataset: it normalizes the MR"):
        train(other, tmp_path / "run", cfg, resume=True, device="cpu", progress=False)
    train(prepared, tmp_path / "run", cfg, resume=True, device="cpu", progress=False)  # its own dataset: fine


def test_a_full_disk_during_train_says_so(tmp_path, monkeypatch):
    """Used to show torch's internal '[enforce fail ... unexpected pos]'."""
    import medtrans.fsutil as fsutil

    def short_write(obj, f, *a, **k):
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 4096 vs 4032")

    monkeypatch.setattr(torch, "save", short_write)
    monkeypatch.setattr(fsutil.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 2**20, 2**20))
    with pytest.raises(OutputError, match=r"ckpt\.pt: could not be written: no space left on the device \(1 MB free\)"):
        fsutil.save_torch(tmp_path / "ckpt.pt", {"a": torch.zeros(2)})
    assert not (tmp_path / "ckpt.pt").exists()


def test_a_checkpoint_with_code_in_it_is_refused_as_such(tmp_path):
    """Used to be called 'damaged or not a PyTorch weights file'."""
    from medtrans.fsutil import load_torch

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"generator": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(DatasetError, match="holds objects other than tensors and plain values"):
        load_torch(tmp_path / "evil.pt", what="the run's last checkpoint")


def test_train_refusing_a_foreign_folder_does_not_suggest_an_option_it_lacks(prepared, tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    err = one_line_error(cli("train", "--data", str(prepared), "--out", str(tmp_path / "busy"), *TINY_SETS,
                             "--device", "cpu"))
    assert "not empty" in err and "--allow-nonempty-out" not in err
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"


# ------------------------------------------------------------------------------------------------ output folders


def test_two_commands_cannot_write_one_folder_at_once(tmp_path):
    """Used to let two converts into one --out both print 'ok' while only the second model's sCTs remained."""
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from medtrans.output_dirs import claim_output_dir; "
        f"claim_output_dir({str(tmp_path / 'out')!r}, kind='convert'); print('held', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputError, match=r"is being written by another medtrans command \(medtrans convert, "
                                              r"process \d+"):
            claim_output_dir(tmp_path / "out", kind="convert")
    finally:
        holder.kill()
        holder.wait()
    claim_output_dir(tmp_path / "out", kind="convert")  # the lock went with the process
    claim_output_dir(tmp_path / "out", kind="convert")  # the same process may claim again
    release_output_dir(tmp_path / "out")
    release_output_dir(tmp_path / "out")
    assert (tmp_path / "out" / LOCK).is_file()


def test_outputs_follow_the_umask(tiny_run, prepared, tmp_path):
    """Used to be 0600 files and a 0700 DICOM folder whatever the umask."""
    (tmp_path / "in" / "a").mkdir(parents=True)
    shutil.copy(prepared / "phantom_000" / "mr.nii.gz", tmp_path / "in" / "a" / "mr.nii.gz")
    r = cli("convert", "--model", str(tiny_run), "--input", str(tmp_path / "in"), "--out", str(tmp_path / "out"),
            "--format", "dicom", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert os.stat(tmp_path / "out" / "a" / "sct.json").st_mode & 0o777 == 0o666 & ~_umask()
    assert os.stat(tmp_path / "out" / "a" / "sct_dicom").st_mode & 0o777 == 0o777 & ~_umask()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_ctrl_c_says_how_to_resume(tmp_path):
    """Used to exit 130 without the documented line."""
    make_case(tmp_path / "cohort" / "a", seed=1, aligned=False)
    make_case(tmp_path / "cohort" / "b", seed=2, aligned=False)
    p = subprocess.Popen([sys.executable, "-m", "medtrans", "prepare", "--input", str(tmp_path / "cohort"), "--out",
                          str(tmp_path / "prep"), "--workers", "1", *TINY_SETS], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    time.sleep(8)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 130 and "interrupted; rerun the same command to resume" in err, (p.returncode, err)
    assert "Traceback" not in err


# ------------------------------------------------------------------------------------------------ pairs and inputs


def test_another_patients_ct_is_flagged_as_doubtful_pairing(tmp_path):
    """Used to be accepted as a pair (the registration check agrees on the best, poor, fit)."""
    from medtrans.data_prep.pipeline import prepare_cohort

    for i in range(3):
        make_case(tmp_path / "src" / f"p{i}", seed=40 + i, aligned=False)
    cohort = tmp_path / "cohort"
    shutil.copytree(tmp_path / "src" / "p0", cohort / "true")
    (cohort / "swapped").mkdir()
    shutil.copy(tmp_path / "src" / "p1" / "mr.nii.gz", cohort / "swapped" / "mr.nii.gz")
    shutil.copy(tmp_path / "src" / "p2" / "ct.nii.gz", cohort / "swapped" / "ct.nii.gz")
    manifest = prepare_cohort(cohort, tmp_path / "prep", load_config(None, overrides=TINY), progress=False)
    records = {r["case"]: r for r in manifest["cases"]}
    gains = {n: r["qa"]["pairing_mi_gain"] for n, r in records.items()}
    print("pairing gains", gains)
    assert gains["true"] > 2.2 and gains["swapped"] < 1.8, gains
    assert [f["name"] for f in records["swapped"]["qa"]["flags"]] == ["pairing_doubtful"]
    assert not records["true"]["qa"]["flags"]


def test_a_ct_given_as_mr_fails_at_convert(tiny_run, aligned_cohort, tmp_path):
    """The histogram check could not tell a CT given as MR from a real held-out MR; its own check fails it."""
    (tmp_path / "in" / "ct_as_mr").mkdir(parents=True)
    shutil.copy(aligned_cohort / "phantom_000" / "ct.nii.gz", tmp_path / "in" / "ct_as_mr" / "mr.nii.gz")
    (tmp_path / "in" / "real_mr").mkdir()  # (a case folder named "mr" would read as the cohort's own MR folder)
    shutil.copy(aligned_cohort / "phantom_000" / "mr.nii.gz", tmp_path / "in" / "real_mr" / "mr.nii.gz")
    res = {r["case"]: r for r in convert_cohort(tiny_run, tmp_path / "in", tmp_path / "out", device="cpu",
                                               progress=False)}
    assert res["ct_as_mr"]["status"] == "failed" and "looks like a CT in HU" in res["ct_as_mr"]["error"]
    assert res["real_mr"]["status"] == "ok"


def test_adding_a_case_never_renames_another_and_orphans_are_said(tiny_run, prepared, tmp_path):
    """Used to rename 'Patiënt 01' when 'Patiënt_01' was added (3 sCTs for 2 patients, the old one unmentioned)."""
    cohort = tmp_path / "in"
    (cohort / "Patiënt 01").mkdir(parents=True)
    shutil.copy(prepared / "phantom_000" / "mr.nii.gz", cohort / "Patiënt 01" / "mr.nii.gz")
    first = {r["case"] for r in convert_cohort(tiny_run, cohort, tmp_path / "out", device="cpu", progress=False)}
    (cohort / "Patiënt_01").mkdir()
    shutil.copy(prepared / "phantom_001" / "mr.nii.gz", cohort / "Patiënt_01" / "mr.nii.gz")
    second = convert_cohort(tiny_run, cohort, tmp_path / "out", device="cpu", progress=False)
    assert first <= {r["case"] for r in second if r["status"] == "skipped"}  # the first patient kept its name
    assert len({r["case"] for r in second}) == 2
    shutil.rmtree(cohort / "Patiënt 01")
    third = convert_cohort(tiny_run, cohort, tmp_path / "out", device="cpu", progress=False)
    orphaned = [r for r in third if r["status"] == "orphaned"]
    assert [r["case"] for r in orphaned] == sorted(first) and "left in place" in orphaned[0]["reason"]
