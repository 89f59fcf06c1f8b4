"""Volume I/O and geometry: exact round trips on oblique, anisotropic, flipped volumes; real files; errors."""

from __future__ import annotations

import gzip
import shutil

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from conftest import shared_path

from medtrans.dicom_out import new_link, write_dicom_series
from medtrans.errors import DicomSeriesError, InputError
from medtrans.geometry import from_canonical, orientation_code, ras_affine, same_grid, to_canonical
from medtrans.io import read_volume, volume_info, write_volume


def oblique_volume(direction_flip=(1, 1, 1), dtype=np.int16, size=(23, 17, 11)) -> sitk.Image:
    rng = np.random.default_rng(0)
    arr = rng.integers(-1000, 2000, size[::-1]).astype(dtype)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.7, 1.3, 3.1))
    t = sitk.Euler3DTransform()
    t.SetRotation(0.3, -0.2, 0.5)
    d = np.array(t.GetMatrix()).reshape(3, 3) * np.array(direction_flip)[None, :]
    img.SetDirection(d.ravel().tolist())
    img.SetOrigin((-12.5, 40.25, 101.0))
    return img


def assert_same(a: sitk.Image, b: sitk.Image, tol: float = 1e-5) -> None:
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=tol)
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=tol)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=tol)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b))


@pytest.mark.parametrize("flip", [(1, 1, 1), (-1, 1, 1), (1, -1, -1)])
def test_nifti_mha_nrrd_roundtrip_oblique(tmp_path, flip):
    img = oblique_volume(flip)
    write_volume(img, tmp_path / "a.nii.gz")
    a = read_volume(tmp_path / "a.nii.gz").image
    write_volume(a, tmp_path / "b.mha")
    b = read_volume(tmp_path / "b.mha").image
    write_volume(b, tmp_path / "c.nii.gz")
    write_volume(b, tmp_path / "d.nrrd")
    for p in ("a.nii.gz", "b.mha", "c.nii.gz", "d.nrrd"):
        assert_same(read_volume(tmp_path / p).image, img)


def test_nifti_ras_affine_matches_nibabel(tmp_path):
    img = oblique_volume((-1, 1, 1))
    write_volume(img, tmp_path / "a.nii.gz")
    np.testing.assert_allclose(nib.load(tmp_path / "a.nii.gz").affine, ras_affine(img), atol=1e-4)


def test_dicom_roundtrip_oblique_anisotropic(tmp_path):
    img = oblique_volume()
    files = write_dicom_series(img, tmp_path / "dcm", modality="CT", link=new_link(), series_description="t")
    assert len(files) == img.GetSize()[2]
    vol = read_volume(tmp_path / "dcm")
    assert vol.modality == "CT"
    assert_same(vol.image, img, tol=1e-4)
    write_volume(vol.image, tmp_path / "x.nii.gz")
    assert_same(read_volume(tmp_path / "x.nii.gz").image, img, tol=1e-4)


@pytest.mark.parametrize("flip", [(1, 1, 1), (-1, -1, 1), (1, 1, -1), (-1, 1, -1)])
def test_canonical_roundtrip_is_exact(flip):
    img = oblique_volume(flip)
    canon = to_canonical(img)
    assert orientation_code(canon) == "LPS"
    back = from_canonical(canon, reference=img)
    assert same_grid(back, img, tolerance=0)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(img))
    # every voxel keeps its physical position
    idx = (3, 5, 7)
    p = img.TransformIndexToPhysicalPoint(idx)
    q = canon.TransformPhysicalPointToIndex(p)
    assert img[idx] == canon[q]


def test_shared_ct_dicom_series_in_hu():
    folder = shared_path("totalsegmentator_examples", "example_ct_dicom")
    vol = read_volume(folder)
    reader = sitk.ImageSeriesReader()
    ref = sitk.ReadImage(reader.GetGDCMSeriesFileNames(str(folder)))
    assert_same(vol.image, ref, tol=1e-4)
    info = volume_info(vol)
    assert info["modality"] == "CT" and info["min"] == pytest.approx(-1024) and info["max"] == pytest.approx(1839)


def test_shared_philips_phantom_series_without_extensions():
    vol = read_volume(shared_path("dcm_qa_ct", "Philips_head_phantom"))
    assert vol.image.GetSize() == (512, 512, 28)
    assert volume_info(vol)["min"] == pytest.approx(-1024)


def test_shared_single_dicom_rescale():
    vol = read_volume(shared_path("pydicom_test_files", "CT_small.dcm"))
    import pydicom

    ds = pydicom.dcmread(shared_path("pydicom_test_files", "CT_small.dcm"))
    stored = ds.pixel_array.astype(np.float64)
    hu = sitk.GetArrayFromImage(vol.image)[0]
    np.testing.assert_allclose(hu, stored * float(ds.RescaleSlope) + float(ds.RescaleIntercept))


@pytest.mark.parametrize("name", ["example_ct_sm.nii.gz", "example_mr_sm.nii.gz"])
def test_shared_nifti_ras_and_lps(name):
    p = shared_path("totalsegmentator_examples", name)
    img = read_volume(p).image
    np.testing.assert_allclose(ras_affine(img), nib.load(p).affine, atol=1e-4)


def test_errors_name_file_and_problem(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_volume(tmp_path / "nope.nii.gz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="empty folder"):
        read_volume(tmp_path / "empty")
    txt = tmp_path / "text.nii.gz"
    txt.write_text("not an image")
    with pytest.raises(InputError, match=r"text\.nii\.gz.*damaged NIfTI file"):
        read_volume(txt)
    img = oblique_volume()
    write_volume(img, tmp_path / "good.nii.gz")
    raw = gzip.decompress((tmp_path / "good.nii.gz").read_bytes())
    (tmp_path / "trunc.nii.gz").write_bytes(gzip.compress(raw[: len(raw) // 2]))
    with pytest.raises(InputError, match=r"trunc\.nii\.gz: is a damaged NIfTI file: it holds \d+ of the \d+ voxel"):
        read_volume(tmp_path / "trunc.nii.gz")
    gz = (tmp_path / "good.nii.gz").read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(gz[: len(gz) - 100])  # a copy that stopped early
    with pytest.raises(InputError, match=r"cut\.nii\.gz: is a damaged NIfTI file: its gzip data"):
        read_volume(tmp_path / "cut.nii.gz")
    flipped = bytearray(gz)
    flipped[len(gz) - 30] ^= 0xFF  # one corrupted byte in the voxel data: SimpleITK alone reads it without complaint
    (tmp_path / "flip.nii.gz").write_bytes(bytes(flipped))
    with pytest.raises(InputError, match=r"flip\.nii\.gz: is a damaged NIfTI file"):
        read_volume(tmp_path / "flip.nii.gz")
    nan = sitk.Cast(img, sitk.sitkFloat32)
    nan[1, 1, 1] = float("nan")
    for ext in (".mha", ".nii.gz"):  # SimpleITK alone would hide the NaN of the NIfTI file
        write_volume(nan, tmp_path / f"nan{ext}")
        with pytest.raises(InputError, match="1 NaN"):
            read_volume(tmp_path / f"nan{ext}")


def test_dicom_two_series_and_missing_slice(tmp_path):
    img = oblique_volume()
    link = new_link()
    write_dicom_series(img, tmp_path / "a", modality="CT", link=link, series_description="first")
    write_dicom_series(img, tmp_path / "b", modality="MR", link=link, series_description="second")
    both = tmp_path / "both"
    both.mkdir()
    for sub in ("a", "b"):
        for f in (tmp_path / sub).iterdir():
            shutil.copy(f, both / f"{sub}_{f.name}")
    with pytest.raises(DicomSeriesError, match="holds 2 series.*first.*second|holds 2 series.*second.*first"):
        read_volume(both)
    assert read_volume(both, modality="MR").modality == "MR"
    files = sorted((tmp_path / "a").iterdir())
    files[5].unlink()
    with pytest.raises(DicomSeriesError, match="missing 1 slice"):
        read_volume(tmp_path / "a")
