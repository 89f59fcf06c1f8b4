"""RTSTRUCT regions as masks (a dose target drawn in a planning system)."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medtrans.errors import InputError
from medtrans.io.rtstruct import roi_names, rtstruct_mask

CENTRE = np.array([12.0, -30.0, 41.0])  # mm, LPS
RADIUS = 21.0


def ct_grid() -> sitk.Image:
    """A non-isotropic CT grid with an origin off zero (the contours are in mm, not voxels)."""
    img = sitk.Image([64, 56, 30], sitk.sitkInt16)
    img.SetSpacing((0.9, 1.1, 2.5))
    img.SetOrigin((-20.0, -60.0, 5.0))
    return img


def write_rtstruct(path, ct: sitk.Image, *, hole: bool = False) -> None:
    """A sphere drawn slice by slice (64-point circles on the CT's slices), as a planning system writes it, with an
    optional hole (a smaller circle inside on each slice) and a second region."""
    contours = []
    for k in range(ct.GetSize()[2]):
        z = ct.TransformIndexToPhysicalPoint((0, 0, k))[2]
        r2 = RADIUS**2 - (z - CENTRE[2]) ** 2
        if r2 <= 1:
            continue
        for radius in (np.sqrt(r2), np.sqrt(r2) / 2) if hole else (np.sqrt(r2),):
            t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
            pts = np.stack([CENTRE[0] + radius * np.cos(t), CENTRE[1] + radius * np.sin(t), np.full_like(t, z)], 1)
            c = Dataset()
            c.ContourGeometricType = "CLOSED_PLANAR"
            c.NumberOfContourPoints = len(pts)
            c.ContourData = [f"{v:.3f}" for v in pts.ravel()]
            contours.append(c)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.481.3"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "RTSTRUCT"
    rois = []
    for number, name in ((1, "External"), (2, "PTV_60")):
        r = Dataset()
        r.ROINumber, r.ROIName = number, name
        rois.append(r)
    ds.StructureSetROISequence = Sequence(rois)
    roi = Dataset()
    roi.ReferencedROINumber = 2
    roi.ContourSequence = Sequence(contours)
    ds.ROIContourSequence = Sequence([roi])
    pydicom.dcmwrite(path, ds, enforce_file_format=True)


def sphere(ct: sitk.Image, radius: float) -> np.ndarray:
    nx, ny, nz = ct.GetSize()
    k, j, i = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
    pts = np.stack([i, j, k], -1) * np.array(ct.GetSpacing()) + np.array(ct.GetOrigin())
    return np.linalg.norm(pts - CENTRE, axis=-1) <= radius


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / float(a.sum() + b.sum())


def test_a_region_is_filled_on_the_ct_grid_where_it_was_drawn(tmp_path):
    ct = ct_grid()
    write_rtstruct(tmp_path / "rtstruct.dcm", ct)
    assert roi_names(tmp_path / "rtstruct.dcm") == ["External", "PTV_60"]
    mask = rtstruct_mask(tmp_path / "rtstruct.dcm", "ptv_60", ct)  # names match case-insensitively
    assert mask.GetSize() == ct.GetSize() and mask.GetSpacing() == ct.GetSpacing()
    got = sitk.GetArrayFromImage(mask) > 0
    truth = sphere(ct, RADIUS)
    print(f"RTSTRUCT sphere vs the analytic one: Dice {dice(got, truth):.3f}, {got.sum()} vs {truth.sum()} voxels")
    assert dice(got, truth) > 0.95
    shifted = np.roll(truth, 4, axis=2)  # 3.6 mm off: a rasterisation that ignored the origin would match this
    assert dice(got, shifted) < dice(got, truth) - 0.1


def test_a_contour_inside_another_is_a_hole(tmp_path):
    ct = ct_grid()
    write_rtstruct(tmp_path / "rtstruct.dcm", ct, hole=True)
    got = sitk.GetArrayFromImage(rtstruct_mask(tmp_path / "rtstruct.dcm", "PTV_60", ct)) > 0
    assert dice(got, sphere(ct, RADIUS)) < 0.9
    k = ct.TransformPhysicalPointToIndex(tuple(CENTRE))
    assert not got[k[2], k[1], k[0]]  # the centre is in the hole


def test_a_missing_region_or_a_file_that_is_no_structure_set_is_named(tmp_path):
    ct = ct_grid()
    write_rtstruct(tmp_path / "rtstruct.dcm", ct)
    with pytest.raises(InputError, match=r"no region named 'GTV' \(its regions: 'External', 'PTV_60'\)"):
        rtstruct_mask(tmp_path / "rtstruct.dcm", "GTV", ct)
    with pytest.raises(InputError, match="region 'External' has no closed planar contour"):
        rtstruct_mask(tmp_path / "rtstruct.dcm", "External", ct)
    (tmp_path / "other.dcm").write_bytes(b"not dicom at all")
    with pytest.raises(InputError, match="other.dcm.*not a readable DICOM file"):
        rtstruct_mask(tmp_path / "other.dcm", "PTV_60", ct)
    off = ct_grid()
    off.SetOrigin((-20.0, -60.0, 6.2))  # slices 1.2 mm away from those the contours were drawn on
    with pytest.raises(InputError, match="does not lie on a slice of the CT"):
        rtstruct_mask(tmp_path / "rtstruct.dcm", "PTV_60", off)
