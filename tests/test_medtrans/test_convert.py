"""convert: exact geometry in every format, DICOM linkage and read-back, batch behaviour, determinism."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from medtrans.cohort import discover
from medtrans.convert import convert_cohort, parse_shard, shard_cases
from medtrans.dicom_out import new_link, write_dicom_series
from medtrans.errors import MedtransError
from medtrans.geometry import same_grid


def oblique_mr(src: Path, flip_x: bool = False) -> sitk.Image:
    """A phantom MR re-gridded onto an oblique, anisotropic (optionally left-right flipped) grid."""
    mr = sitk.ReadImage(str(src))
    t = sitk.Euler3DTransform((0, 0, 0), 0.15, -0.1, 0.2)
    d = np.array(t.GetMatrix()).reshape(3, 3)
    if flip_x:
        d[:, 0] *= -1
    ref = sitk.Image([90, 100, 30], sitk.sitkInt16)
    ref.SetSpacing((1.7, 1.9, 4.1))
    ref.SetDirection(d.ravel().tolist())
    centre = np.array(mr.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in mr.GetSize()]))
    ref.SetOrigin((centre - d @ (np.array([89, 99, 29]) * np.array([1.7, 1.9, 4.1]) / 2)).tolist())
    return sitk.Resample(mr, ref, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkInt16)


@pytest.mark.parametrize("fmt", ["nifti", "mha", "dicom"])
@pytest.mark.parametrize("flip_x", [False, True])
def test_geometry_exact_on_oblique_anisotropic(tiny_run, prepared, tmp_path, fmt, flip_x):
    mr = oblique_mr(prepared / "phantom_000" / "mr.nii.gz", flip_x)
    (tmp_path / "in" / "case1").mkdir(parents=True)
    sitk.WriteImage(mr, str(tmp_path / "in" / "case1" / "mr.mha"))
    res = convert_cohort(tiny_run, tmp_path / "in", tmp_path / "out", fmt=fmt, device="cpu", progress=False)
    assert res[0]["status"] == "ok", res
    if fmt == "dicom":
        sct = sitk.ReadImage(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(tmp_path / "out/case1/sct_dicom")))
    else:
        sct = sitk.ReadImage(str(tmp_path / "out" / "case1" / ("sct.nii.gz" if fmt == "nifti" else "sct.mha")))
    if fmt == "dicom" and flip_x:
        # a left-handed grid cannot be stacked as DICOM slices: it comes back with z reversed, same voxels in space
        assert same_grid(sct, sitk.Flip(mr, [False, False, True]), tolerance=1e-4)
    else:
        assert same_grid(sct, mr, tolerance=1e-4)
    assert sitk.GetArrayFromImage(sct).max() > 300  # bone predicted somewhere
    rec = json.loads((tmp_path / "out" / "case1" / "sct.json").read_text())
    assert rec["geometry"]["size"] == [90, 100, 30] and len(rec["bundle_sha256"]) == 64


def test_dicom_output_joins_source_study_and_reads_back(tiny_run, prepared, tmp_path):
    mr = oblique_mr(prepared / "phantom_001" / "mr.nii.gz")
    link = new_link(patient_id="SECRET-ID-123", patient_name="Doe^Jane")
    write_dicom_series(mr, tmp_path / "in" / "pat" / "mr", modality="MR", link=link, series_description="t1")
    res = convert_cohort(tiny_run, tmp_path / "in", tmp_path / "out", fmt="dicom", device="cpu", progress=False)
    assert res[0]["status"] == "ok", res
    folder = tmp_path / "out" / "pat" / "sct_dicom"
    dss = [pydicom.dcmread(f) for f in sorted(folder.iterdir())]
    src = pydicom.dcmread(next((tmp_path / "in" / "pat" / "mr").iterdir()))
    assert {d.SeriesInstanceUID for d in dss} != {src.SeriesInstanceUID}
    assert len({d.SOPInstanceUID for d in dss}) == len(dss)
    for d in dss:
        assert d.StudyInstanceUID == src.StudyInstanceUID and d.FrameOfReferenceUID == src.FrameOfReferenceUID
        assert d.PatientID == src.PatientID and d.Modality == "CT"
        assert list(d.ImageType)[:2] == ["DERIVED", "SECONDARY"] and "synthetic" in d.SeriesDescription.lower()
        assert d.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
    # pydicom HU == SimpleITK HU == NIfTI output HU
    hu_pydicom = np.stack([d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept) for d in dss])
    sitk_img = sitk.ReadImage(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
    np.testing.assert_array_equal(hu_pydicom, sitk.GetArrayFromImage(sitk_img))
    convert_cohort(tiny_run, tmp_path / "in", tmp_path / "out_nii", device="cpu", progress=False)
    nii = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out_nii" / "pat" / "sct.nii.gz")))
    np.testing.assert_array_equal(np.clip(nii, -1024, None), hu_pydicom)
    # no identifiers in the JSON record
    text = (tmp_path / "out" / "pat" / "sct.json").read_text()
    assert "SECRET-ID-123" not in text and "Doe" not in text
    # an independent converter (dcm2niix) reads it with the same geometry
    dcm2niix = dev_tool("dcm2niix")
    (tmp_path / "d2n").mkdir()
    subprocess.run([dcm2niix, "-z", "y", "-f", "sct", "-o", str(tmp_path / "d2n"), str(folder)], check=True,
                   capture_output=True)
    d2n = sitk.ReadImage(str(tmp_path / "d2n" / "sct.nii.gz"))
    np.testing.assert_allclose(d2n.GetSpacing(), sitk_img.GetSpacing(), atol=1e-3)
    centre = [(s - 1) / 2 for s in sitk_img.GetSize()]
    np.testing.assert_allclose(d2n.TransformContinuousIndexToPhysicalPoint(centre),
                               sitk_img.TransformContinuousIndexToPhysicalPoint(centre), atol=1e-2)


def dev_tool(name: str) -> str:
    """Path of a command-line tool from the dev extras (installed beside the interpreter), or skip."""
    path = shutil.which(name) or str(Path(sys.executable).parent / name)
    if not Path(path).exists():
        pytest.skip(f"{name} not installed (pip install -e '.[dev]')")
    return path


@pytest.mark.parametrize("source", ["dicom", "nifti"])
def test_dicom_output_passes_dciodvfy(tiny_run, prepared, tmp_path, source):
    """David Clunie's dciodvfy (the reference IOD validator) reports no error on the sCT series, linked or not."""
    dciodvfy, dcentvfy = dev_tool("dciodvfy"), dev_tool("dcentvfy")
    mr = oblique_mr(prepared / "phantom_000" / "mr.nii.gz")
    if source == "dicom":
        write_dicom_series(mr, tmp_path / "in" / "pat" / "mr", modality="MR", link=new_link(), series_description="t1")
        mr_files = sorted((tmp_path / "in" / "pat" / "mr").iterdir())
    else:
        (tmp_path / "in" / "pat").mkdir(parents=True)
        sitk.WriteImage(mr, str(tmp_path / "in" / "pat" / "mr.nii.gz"))
        mr_files = []
    res = convert_cohort(tiny_run, tmp_path / "in", tmp_path / "out", fmt="dicom", device="cpu", progress=False)
    assert res[0]["status"] == "ok", res
    files = sorted((tmp_path / "out" / "pat" / "sct_dicom").iterdir())
    for f in (*files[:2], files[-1], *mr_files[:1]):
        out = subprocess.run([dciodvfy, str(f)], capture_output=True, text=True)
        errors = [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]
        assert not errors, f"{f.name}: {errors}"
    # entity consistency across the series (and with the source MR's patient/study when linked)
    out = subprocess.run([dcentvfy, *map(str, files + mr_files)], capture_output=True, text=True)
    assert out.returncode == 0 and "Error" not in out.stdout + out.stderr, out.stdout + out.stderr


def test_batch_corrupt_case_kill_rerun_and_determinism(tiny_run, prepared, tmp_path):
    cohort = tmp_path / "cohort"
    for name in ("a", "b", "c"):
        (cohort / name).mkdir(parents=True)
        shutil.copy(prepared / "phantom_000" / "mr.nii.gz", cohort / name / "mr.nii.gz")
    (cohort / "b" / "mr.nii.gz").write_bytes(b"\x1f\x8b corrupt")
    res = {r["case"]: r for r in convert_cohort(tiny_run, cohort, tmp_path / "out", device="cpu", progress=False)}
    assert res["a"]["status"] == "ok" and res["c"]["status"] == "ok"
    assert res["b"]["status"] == "failed" and "mr.nii.gz" in res["b"]["error"]
    first = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / "a" / "sct.nii.gz")))
    np.testing.assert_array_equal(first, sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out/c/sct.nii.gz"))))
    # a "killed" run: case c lost its completion record and left a temp file; the rerun redoes only c
    (tmp_path / "out" / "c" / "sct.json").unlink()
    (tmp_path / "out" / "c" / ".sct.tmp.nii.gz").write_bytes(b"partial")
    again = {r["case"]: r["status"] for r in convert_cohort(tiny_run, cohort, tmp_path / "out", device="cpu",
                                                            progress=False)}
    assert again == {"a": "skipped", "b": "failed", "c": "ok"}
    assert [p.name for p in (tmp_path / "out" / "c").iterdir() if p.name.startswith(".")] == []  # temp swept
    cli = subprocess.run([sys.executable, "-m", "medtrans", "convert", "--model", str(tiny_run), "--input",
                          str(cohort), "--out", str(tmp_path / "out"), "--device", "cpu"],
                         capture_output=True, text=True, timeout=600)
    assert cli.returncode == 1 and "failed" in cli.stdout


def test_sharding_covers_every_case_once(tmp_path):
    for i in range(7):
        (tmp_path / f"case{i}").mkdir()
        (tmp_path / f"case{i}" / "mr.nii.gz").write_bytes(b"")
    cases = discover(tmp_path)
    seen = [c.name for i in range(3) for c in shard_cases(cases, parse_shard(f"{i}/3"))]
    assert sorted(seen) == sorted(c.name for c in cases) and len(seen) == 7
    with pytest.raises(MedtransError):
        parse_shard("3/3")


@pytest.mark.parametrize("overlap", [False, True])
def test_stage_timings_and_input_checks_beside_inference(tiny_run, prepared, tmp_path, monkeypatch, overlap):
    """sct.json says where the time went; with the checks on a thread (as on a GPU) an error flag still fails
    the case before anything is written, and a good case converts the same."""
    import medtrans.convert as convert_module

    monkeypatch.setattr(convert_module, "overlap_input_checks", lambda device: overlap)
    mr = sitk.ReadImage(str(prepared / "phantom_000" / "mr.nii.gz"))
    for name, image in (("good", mr), ("flat", sitk.Cast(mr > 50, sitk.sitkInt16) * 100)):
        (tmp_path / "in" / name).mkdir(parents=True)
        sitk.WriteImage(image, str(tmp_path / "in" / name / "mr.nii.gz"))
    res = {r["case"]: r for r in convert_cohort(tiny_run, tmp_path / "in", tmp_path / "out", device="cpu",
                                                progress=False)}
    assert res["flat"]["status"] == "failed" and "near_constant" in res["flat"]["error"]
    assert not any((tmp_path / "out" / "flat").glob("sct*"))
    assert res["good"]["status"] == "ok"
    stages = res["good"]["timings_s"]
    assert {"decode", "normalize", "input_checks", "to_model_grid", "network", "to_mr_grid", "encode"} <= set(stages)
    assert sum(v for k, v in stages.items() if k != "total") <= stages["total"] * (2 if overlap else 1) + 1e-3


def test_strict_is_part_of_the_provenance(tiny_run, prepared, tmp_path):
    """Used to report 'skipped: up to date' for a case converted with warnings when the rerun asked for --strict."""
    mr = sitk.ReadImage(str(prepared / "phantom_000" / "mr.nii.gz"))
    mr.SetSpacing([3 * s for s in mr.GetSpacing()])  # far outside the training MRs' spacing: a warning flag
    (tmp_path / "in" / "wide").mkdir(parents=True)
    sitk.WriteImage(mr, str(tmp_path / "in" / "wide" / "mr.nii.gz"))
    first = convert_cohort(tiny_run, tmp_path / "in", tmp_path / "out", device="cpu", progress=False)[0]
    assert first["status"] == "ok" and any(f["severity"] == "warning" for f in first["flags"]), first["flags"]
    again = convert_cohort(tiny_run, tmp_path / "in", tmp_path / "out", device="cpu", progress=False, strict=True)[0]
    assert again["status"] == "failed" and "(--strict)" in again["error"], again
    assert not (tmp_path / "out" / "wide" / "sct.nii.gz").exists()  # the warned-about sCT is not left behind
