"""NIfTI reading and writing (medtrans.io.nifti): one decode, NaN and Inf refused, compressed files any reader takes."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from medtrans.errors import InputError
from medtrans.io import read_volume, volume_info, write_volume


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_nan_and_infinite_voxels_are_refused(tmp_path, bad):
    """+Inf used to be read as 0 (info reported a false maximum; prepare and convert accepted it)."""
    arr = np.zeros((4, 5, 6), np.float32)
    arr[1, 2, 3] = bad
    nib.save(nib.Nifti1Image(arr, np.eye(4)), tmp_path / "x.nii.gz")
    with pytest.raises(InputError, match="1 NaN or infinite voxel"):
        read_volume(tmp_path / "x.nii.gz")
    assert read_volume(tmp_path / "x.nii.gz", allow_nan=True).image.GetSize() == (4, 5, 6)
    mha = sitk.GetImageFromArray(arr)
    sitk.WriteImage(mha, str(tmp_path / "x.mha"))
    with pytest.raises(InputError, match="NaN or infinite"):
        read_volume(tmp_path / "x.mha")


def test_written_nii_gz_is_one_gzip_stream_any_reader_takes(tmp_path):
    arr = np.random.default_rng(0).integers(-1024, 2000, (40, 60, 70)).astype(np.int16)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.7, 0.8, 2.5))
    write_volume(img, tmp_path / "y.nii.gz")
    assert gzip.decompress((tmp_path / "y.nii.gz").read_bytes())[:4] == (348).to_bytes(4, "little")
    np.testing.assert_array_equal(np.asarray(nib.load(tmp_path / "y.nii.gz").dataobj).transpose(2, 1, 0), arr)
    back = read_volume(tmp_path / "y.nii.gz")
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(back.image), arr)
    assert back.image.GetSpacing() == pytest.approx((0.7, 0.8, 2.5)) and volume_info(back)["max"] == arr.max()
