"""The CLI (info, phantom, errors) and the config system."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import yaml
from conftest import shared_path

from medtrans.config import CONFIG_DIR, Config, load_config
from medtrans.errors import ConfigError


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medtrans", *args], capture_output=True, text=True, timeout=600)


def test_info_agrees_with_simpleitk(tmp_path):
    img = sitk.Image([9, 8, 7], sitk.sitkInt16)
    img.SetSpacing((0.9, 1.1, 2.7))
    img.SetDirection(sitk.Euler3DTransform((0, 0, 0), 0.2, 0.1, -0.3).GetMatrix())
    img[2, 3, 4] = 77
    for ext in (".nii.gz", ".mha", ".nrrd"):
        p = tmp_path / f"v{ext}"
        sitk.WriteImage(img, str(p))
        r = run_cli("info", str(p))
        assert r.returncode == 0, r.stderr
        info = json.loads(r.stdout)
        ref = sitk.ReadImage(str(p))
        np.testing.assert_allclose(info["direction"], ref.GetDirection(), atol=1e-4)
        np.testing.assert_allclose(info["spacing"], ref.GetSpacing(), atol=1e-4)
        np.testing.assert_allclose(info["origin"], ref.GetOrigin(), atol=1e-4)
        assert info["size"] == [9, 8, 7] and info["max"] == 77


def test_info_shared_dicom_series():
    folder = shared_path("totalsegmentator_examples", "example_ct_dicom")
    r = run_cli("info", str(folder))
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["modality"] == "CT" and info["size"] == [512, 512, 20]
    assert info["min"] == -1024


def test_cli_error_is_one_line(tmp_path):
    r = run_cli("info", str(tmp_path / "missing.nii.gz"))
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "missing.nii.gz: does not exist" in r.stderr
    assert "Traceback" not in r.stderr
    r = run_cli("--debug", "info", str(tmp_path / "missing.nii.gz"))
    assert "Traceback" in r.stderr


@pytest.mark.parametrize("fmt,aligned", [("nifti", True), ("nifti", False), ("dicom", False), ("mha", True)])
def test_phantom_cohorts(tmp_path, fmt, aligned):
    args = ["phantom", "--out", str(tmp_path / "c"), "--cases", "2", "--format", fmt] + (["--aligned"] if aligned else [])
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr
    case = tmp_path / "c" / "phantom_000"
    if fmt == "dicom":
        import pydicom

        mr = [pydicom.dcmread(f) for f in sorted((case / "mr").iterdir())[:1]]
        ct = [pydicom.dcmread(f) for f in sorted((case / "ct").iterdir())[:1]]
        assert mr[0].StudyInstanceUID == ct[0].StudyInstanceUID
        assert mr[0].FrameOfReferenceUID == ct[0].FrameOfReferenceUID
        assert mr[0].PatientID == ct[0].PatientID
        assert mr[0].Modality == "MR" and ct[0].Modality == "CT"
        return
    ext = ".nii.gz" if fmt == "nifti" else ".mha"
    mr = sitk.ReadImage(str(case / f"mr{ext}"))
    ct = sitk.ReadImage(str(case / f"ct{ext}"))
    if fmt == "nifti":
        assert nib.load(case / "mr.nii.gz").shape == mr.GetSize()
    assert (mr.GetSize() == ct.GetSize()) == aligned
    assert (case / f"mask{ext}").exists() == aligned
    hu = sitk.GetArrayFromImage(ct)
    assert hu.min() >= -1024 and hu.max() > 1000  # cortical bone in HU
    assert len(set(mr.GetSpacing())) > 1  # anisotropic


def test_phantom_is_deterministic_and_varies(tmp_path):
    from medtrans.phantom import make_cohort

    a = make_cohort(tmp_path / "a", cases=2, seed=1, aligned=True)
    b = make_cohort(tmp_path / "b", cases=2, seed=1, aligned=True)
    read = lambda p: sitk.GetArrayFromImage(sitk.ReadImage(str(p / "ct.nii.gz")))  # noqa: E731
    np.testing.assert_array_equal(read(a[0]), read(b[0]))
    assert not np.array_equal(read(a[0]), read(a[1]))


def test_phantom_mr_cannot_tell_bone_from_air(tmp_path):
    from medtrans.phantom import make_case

    make_case(tmp_path, seed=0, aligned=True)
    mr = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "mr.nii.gz"))).astype(float)
    ct = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "ct.nii.gz")))
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "mask.nii.gz"))) > 0
    bone, air, soft = mr[mask & (ct > 1000)], mr[~mask], mr[mask & (np.abs(ct) < 60)]
    # cortical bone is nearly as dark as air (thin shells pick up some partial volume), unlike soft tissue
    assert abs(np.median(bone) - np.median(air)) < 0.2 * np.percentile(mr[mask], 99)
    assert np.median(bone) < 0.5 * np.median(soft)


def test_default_yaml_matches_dataclasses():
    assert yaml.safe_load((CONFIG_DIR / "default.yaml").read_text()) == Config().to_dict()
    for f in CONFIG_DIR.glob("*.yaml"):
        load_config(f)


def test_config_errors():
    with pytest.raises(ConfigError, match="unknown key 'train.batchsize'"):
        load_config(None, overrides=["train.batchsize=3"])
    with pytest.raises(ConfigError, match="must be an integer"):
        load_config(None, overrides=["train.batch_size=2.5"])
    with pytest.raises(ConfigError, match="odd"):
        load_config(None, overrides=["model.context_slices=2"])


def test_config_keys_are_documented():
    doc = (Path(__file__).resolve().parents[2] / "docs" / "config.md").read_text()
    for section, values in Config().to_dict().items():
        for key in values:
            assert f"| `{section}.{key}` | `{values[key]}` |" in doc, \
                f"{section}.{key} (default {values[key]}) missing from docs/config.md or its default is stale"
