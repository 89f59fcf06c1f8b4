"""Real scanner cohorts: gantry tilt and irregular spacing, enhanced multi-frame DICOM, series selection, and
cohorts of mixed resolution (docs/data_layouts.md)."""

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
from conftest import TINY, shared_path
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medtrans.bundle import load_bundle
from medtrans.config import load_config
from medtrans.convert import convert_cohort
from medtrans.data_prep.pipeline import prepare_cohort
from medtrans.dicom_out import new_link, write_dicom_series
from medtrans.geometry import on_grid_of, resample_onto, same_grid, working_grid
from medtrans.inference import predictor_from_bundle
from medtrans.io import read_volume
from medtrans.phantom import make_cohort
from medtrans.training.trainer import train

ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.1"


def dcm2niix(folder: Path, out: Path) -> list[Path]:
    exe = shutil.which("dcm2niix") or str(Path(sys.executable).parent / "dcm2niix")
    if not Path(exe).exists():
        pytest.skip("dcm2niix is not installed (pip install '.[dev]')")
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run([exe, "-z", "y", "-f", "v", "-o", str(out), str(folder)], capture_output=True, check=True)
    return sorted(out.glob("*.nii.gz"))


def head_mae(ours: sitk.Image, theirs: sitk.Image) -> tuple[float, float, int]:
    """Mean and median |ours - theirs| (HU) over voxels inside the head in both, on our grid."""
    r = sitk.Resample(theirs, ours, sitk.Transform(), sitk.sitkLinear, -3000.0, sitk.sitkFloat32)
    a, b = sitk.GetArrayFromImage(ours).astype(np.float32), sitk.GetArrayFromImage(r)
    head = (b > -2999) & (a > -500) & (b > -500)
    d = np.abs(a - b)[head]
    return float(d.mean()), float(np.median(d)), int(head.sum())


# ------------------------------------------------------------------------------------------------ tilt


def test_gantry_tilt_is_corrected_like_dcm2niix(tmp_path):
    series = shared_path("dcm_qa_ct", "GE_head_tilt")
    headers = [(f, pydicom.dcmread(f, stop_before_pixels=True)) for f in sorted(series.iterdir())]
    iop = np.array(headers[0][1].ImageOrientationPatient, float)
    headers.sort(key=lambda h: float(np.dot(np.array(h[1].ImagePositionPatient, float), np.cross(iop[:3], iop[3:]))))
    uniform = tmp_path / "uniform"  # the first 14 slices: tilted by 18.5 degrees, evenly spaced
    uniform.mkdir()
    for f, _ in headers[:14]:
        shutil.copy(f, uniform / f.name)
    ours = read_volume(uniform)
    assert ours.reconstruction["gantry_tilt_deg"] == pytest.approx(18.5, abs=0.1)
    theirs = sitk.ReadImage(str(next(p for p in dcm2niix(uniform, tmp_path / "d1") if "Tilt" in p.name)))
    assert ours.image.GetSize() == theirs.GetSize()
    np.testing.assert_allclose(ours.image.GetSpacing(), theirs.GetSpacing(), rtol=1e-5)
    mean, median, n = head_mae(ours.image, theirs)
    assert n > 1_000_000 and mean < 1.0 and median < 0.5, (mean, median)  # measured: 0.25 HU mean
    # the whole series also has irregular spacing (4.2 mm, one 1.1 mm step, 7.4 mm): resampled to 4.0 mm steps
    whole = read_volume(series)
    rec = whole.reconstruction
    assert rec["resampled_to_rectilinear_grid"] and rec["slices_in"] == 28 and rec["slice_spacing_mm"] == pytest.approx(4.0019, abs=1e-3)
    d = np.array(whole.image.GetDirection()).reshape(3, 3)
    np.testing.assert_allclose(d.T @ d, np.eye(3), atol=1e-6)  # rectilinear: no shear left
    equalized = sitk.ReadImage(str(next(p for p in dcm2niix(series, tmp_path / "d2") if "Eq" in p.name)))
    mean, median, _ = head_mae(whole.image, equalized)
    # dcm2niix equalizes to 2.6 mm steps: the two differ by where they sample between slices, not in-plane
    assert mean < 20 and median < 2, (mean, median)  # measured: 12.4 / 0.6 HU
    r = subprocess.run([sys.executable, "-m", "medtrans", "info", str(series)], capture_output=True, text=True)
    assert r.returncode == 0 and json.loads(r.stdout)["reconstruction"]["gantry_tilt_deg"] == pytest.approx(18.5, abs=0.1)


def test_tilted_ct_series_prepares(tmp_path):
    """The GE tilt series as the CT of a case (its MR simulated from the corrected CT: a pseudo-pair)."""
    series = shared_path("dcm_qa_ct", "GE_head_tilt")
    ct = read_volume(series).image
    coarse = resample_onto(ct, working_grid(ct, [2.0, 2.0, 4.0]), default=-1024.0)
    hu = sitk.GetArrayFromImage(coarse)
    mr = np.where(hu < -300, 0, np.where(hu > 300, 60, 400 + 0.5 * np.clip(hu, -100, 100))).astype(np.int16)
    mr_img = sitk.GetImageFromArray(mr)
    mr_img.CopyInformation(coarse)
    case = tmp_path / "cohort" / "tilted"
    case.mkdir(parents=True)
    sitk.WriteImage(mr_img, str(case / "mr.nii.gz"))
    shutil.copytree(series, case / "ct")
    cfg = load_config(None, overrides=["prepare.slice_size=[160,160]", "prepare.split=[1,0,0]",
                                       "prepare.registration_iterations=30"])
    manifest = prepare_cohort(tmp_path / "cohort", tmp_path / "prep", cfg, progress=False)
    assert not manifest["failed"], manifest["failed"]
    rec = manifest["cases"][0]
    assert rec["input_reconstruction"]["ct"]["gantry_tilt_deg"] == pytest.approx(18.5, abs=0.1)
    assert "DICOM series" in rec["inputs"]["ct"]


# ------------------------------------------------------------------------------------------------ enhanced


def enhanced_mr(image: sitk.Image, path: Path) -> None:
    """Write ``image`` as one Enhanced MR Image Storage file with per-frame plane positions (a test fixture)."""
    arr = sitk.GetArrayFromImage(image).astype(np.uint16)
    d = np.array(image.GetDirection()).reshape(3, 3)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ENHANCED_MR
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = ENHANCED_MR, meta.MediaStorageSOPInstanceUID
    for key, value in new_link().items():
        setattr(ds, key, value)
    ds.Modality, ds.SeriesInstanceUID, ds.SeriesDescription = "MR", generate_uid(), "T1 enhanced"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    ds.NumberOfFrames, ds.Rows, ds.Columns = arr.shape[0], arr.shape[1], arr.shape[2]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    shared = Dataset()
    orientation, measures = Dataset(), Dataset()
    orientation.ImageOrientationPatient = [float(v) for v in (*d[:, 0], *d[:, 1])]
    sx, sy, sz = image.GetSpacing()
    measures.PixelSpacing, measures.SliceThickness = [sy, sx], sz
    shared.PlaneOrientationSequence, shared.PixelMeasuresSequence = Sequence([orientation]), Sequence([measures])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    frames = []
    for k in range(arr.shape[0]):
        frame, position = Dataset(), Dataset()
        position.ImagePositionPatient = [float(v) for v in image.TransformIndexToPhysicalPoint((0, 0, k))]
        frame.PlanePositionSequence = Sequence([position])
        frames.append(frame)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    ds.PixelData = arr.tobytes()
    ds.save_as(path, enforce_file_format=True)


def test_enhanced_multiframe_round_trip_and_convert(tiny_run, prepared, tmp_path):
    src = sitk.ReadImage(str(prepared / "phantom_000" / "mr.nii.gz"))
    t = sitk.Euler3DTransform((0, 0, 0), 0.1, -0.05, 0.15)
    grid = sitk.Image([90, 100, 30], sitk.sitkUInt16)
    grid.SetSpacing((1.7, 1.9, 4.1))
    grid.SetDirection(t.GetMatrix())
    centre = np.array(src.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in src.GetSize()]))
    d = np.array(t.GetMatrix()).reshape(3, 3)
    grid.SetOrigin((centre - d @ (np.array([89, 99, 29]) * np.array([1.7, 1.9, 4.1]) / 2)).tolist())
    oblique = sitk.Resample(src, grid, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkUInt16)
    case = tmp_path / "in" / "enh"
    case.mkdir(parents=True)
    enhanced_mr(oblique, case / "MR0001.dcm")
    vol = read_volume(case)
    assert vol.modality == "MR" and vol.reconstruction["enhanced_multiframe"] and vol.reconstruction["frames"] == 30
    assert same_grid(vol.image, oblique, tolerance=1e-4)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(vol.image), sitk.GetArrayFromImage(oblique))
    res = convert_cohort(tiny_run, tmp_path / "in", tmp_path / "out", device="cpu", progress=False)
    assert res[0]["status"] == "ok", res
    sct = sitk.ReadImage(str(tmp_path / "out" / "enh" / "sct.nii.gz"))
    assert same_grid(sct, oblique, tolerance=1e-4)


def test_enhanced_files_from_pydicom_data(tiny_run, tmp_path):
    data = pytest.importorskip("pydicom.data")
    ect = data.get_testdata_file("eCT_Supplemental.dcm")
    emri = data.get_testdata_file("emri_small.dcm")
    if ect is None or emri is None:
        pytest.skip("pydicom-data (dev extra) is not installed")
    ct = read_volume(Path(ect))
    ref = sitk.ReadImage(ect)
    assert ct.modality == "CT" and ct.image.GetSize() == (512, 512, 2)
    # frames stacked along row x column (right-handed); SimpleITK stacks the same two frames the other way round
    np.testing.assert_allclose(ct.image.GetDirection(), (-1, 0, 0, 0, 1, 0, 0, 0, -1), atol=1e-6)
    assert ct.image.GetSpacing()[2] == pytest.approx(10.0) and ct.image.GetOrigin() == pytest.approx((99.5, -301.5, -149.0))
    same_voxels = on_grid_of(ct.image, ref)
    assert same_grid(same_voxels, ref, tolerance=1e-4)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(same_voxels), sitk.GetArrayFromImage(ref))  # HU via groups
    # emri_small carries no plane position/orientation at all: its frames cannot be placed in the patient, so it is
    # refused in one line rather than converted on an invented 1 mm grid (reliability round two)
    (tmp_path / "in" / "emri").mkdir(parents=True)
    shutil.copy(emri, tmp_path / "in" / "emri" / "MR0001.dcm")
    res = convert_cohort(tiny_run, tmp_path / "in", tmp_path / "out", device="cpu", progress=False)[0]
    assert res["status"] == "failed" and "cannot be placed in the patient" in res["error"], res
    assert not (tmp_path / "out" / "emri" / "sct.nii.gz").exists()


# ------------------------------------------------------------------------------------------------ series


def test_series_selection(tmp_path):
    cohort = tmp_path / "cohort"
    make_cohort(cohort, cases=1, seed=2, aligned=False, fmt="dicom")
    case = cohort / "phantom_000"
    mr = read_volume(case / "mr")
    link = {**new_link(), **(mr.dicom_link or {})}
    write_dicom_series(mr.image, case / "t2", modality="MR", link=link, series_description="T2 TSE AX")
    locs = sitk.Image([64, 64, 3], sitk.sitkUInt16) + 100
    locs.SetSpacing((4.0, 4.0, 30.0))
    write_dicom_series(locs, case / "loc", modality="MR", link=link, series_description="3-plane loc",
                       extra={"ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER"]})
    for f in (case / "mr").iterdir():  # the phantom's own MR series becomes "T1 MPRAGE"
        ds = pydicom.dcmread(f)
        ds.SeriesDescription = "T1 MPRAGE"
        ds.save_as(f)
    before = {p: p.read_bytes() for p in cohort.rglob("*") if p.is_file()}
    cfg = load_config(None, overrides=[*TINY, "prepare.split=[1,0,0]"])
    failed = prepare_cohort(cohort, tmp_path / "p1", cfg, progress=False)["failed"]
    assert len(failed) == 1
    msg = failed[0]["error"]
    assert "2 MR series could be meant" in msg and "--mr-series" in msg
    assert "T1 MPRAGE" in msg and "T2 TSE AX" in msg and "[localizer]" in msg
    manifest = prepare_cohort(cohort, tmp_path / "p2", cfg, progress=False, mr_series="t1")
    assert not manifest["failed"], manifest["failed"]
    assert "T1 MPRAGE" in manifest["cases"][0]["inputs"]["mr"]
    failed = prepare_cohort(cohort, tmp_path / "p3", cfg, progress=False, mr_series="flair")["failed"]
    assert "no MR series match --mr-series 'flair'" in failed[0]["error"]
    assert before == {p: p.read_bytes() for p in cohort.rglob("*") if p.is_file()}
    r = subprocess.run([sys.executable, "-m", "medtrans", "prepare", "--input", str(cohort), "--out",
                        str(tmp_path / "p4"), "--mr-series", "T2", *[a for t in TINY for a in ("--set", t)]],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "T2 TSE AX" in json.loads((tmp_path / "p4" / "phantom_000" / "record.json").read_text())["inputs"]["mr"]


# ------------------------------------------------------------------------------------------------ resolution


def regrid(image: sitk.Image, in_plane: float, *, nearest: bool = False, default: float = 0.0) -> sitk.Image:
    return resample_onto(image, working_grid(image, [in_plane, in_plane]), nearest=nearest, default=default)


def test_mixed_resolution_cohort(aligned_cohort, tmp_path):
    """MRs at 0.5, 1.0 and 1.5 mm in-plane train one model at the cohort's median spacing; an sCT does not depend
    on the resolution its MR was acquired at, and each comes back on its own MR's grid."""
    cohort = tmp_path / "cohort"
    for name, spacing in zip(sorted(p.name for p in aligned_cohort.iterdir()), (0.5, 1.0, 1.5, 1.0), strict=True):
        (cohort / name).mkdir(parents=True)
        for role, nearest, default in (("mr", False, 0.0), ("ct", False, -1024.0), ("mask", True, 0.0)):
            img = sitk.ReadImage(str(aligned_cohort / name / f"{role}.nii.gz"))
            sitk.WriteImage(regrid(img, spacing, nearest=nearest, default=default), str(cohort / name / f"{role}.nii.gz"))
    sets = [*TINY, "prepare.slice_size=[208,208]", "prepare.registration=none", "prepare.split=[0.5,0.25,0.25]",
            "train.max_steps=150", "train.val_every=150"]
    cfg = load_config(None, overrides=sets)
    manifest = prepare_cohort(cohort, tmp_path / "prep", cfg, progress=False)
    assert not manifest["failed"], manifest["failed"]
    assert manifest["working_spacing"]["mm"] == [1.0, 1.0] and "median" in manifest["working_spacing"]["source"]
    train(tmp_path / "prep", tmp_path / "run", cfg, device="cpu", progress=False)
    bundle = load_bundle(tmp_path / "run")
    assert bundle.spacing == [1.0, 1.0]
    fine_case = sorted(p.name for p in aligned_cohort.iterdir())[0]  # the 0.5 mm case
    fine = sitk.ReadImage(str(cohort / fine_case / "mr.nii.gz"))
    coarse = regrid(fine, 1.0)  # the same anatomy at 1.0 mm
    body = regrid(sitk.ReadImage(str(cohort / fine_case / "mask.nii.gz")), 1.0, nearest=True)
    inside = sitk.GetArrayFromImage(body) > 0

    def disagreement(predictor) -> float:
        a = predictor.predict_image(fine)
        b = predictor.predict_image(coarse)
        assert same_grid(a, fine) and same_grid(b, coarse)  # each sCT on its own MR's grid
        a_on_b = sitk.GetArrayFromImage(resample_onto(a, coarse, default=-1024.0))
        return float(np.abs(a_on_b - sitk.GetArrayFromImage(b))[inside].mean())

    harmonized = disagreement(predictor_from_bundle(bundle, device=__import__("torch").device("cpu")))
    native = predictor_from_bundle(bundle, device=__import__("torch").device("cpu"))
    native.spacing = None  # the same weights applied at each MR's native resolution, as before this change
    unharmonized = disagreement(native)
    print(f"sCT disagreement 0.5 mm vs 1.0 mm MR in the body: {harmonized:.1f} HU at the working spacing, "
          f"{unharmonized:.1f} HU at native resolution")
    assert harmonized < 40 and harmonized < 0.5 * unharmonized, (harmonized, unharmonized)
    res = {r["case"]: r for r in convert_cohort(tmp_path / "run", cohort, tmp_path / "sct", device="cpu",
                                                progress=False)}
    for name in res:
        mr = sitk.ReadImage(str(cohort / name / "mr.nii.gz"))
        assert same_grid(sitk.ReadImage(str(tmp_path / "sct" / name / "sct.nii.gz")), mr, tolerance=1e-5)
