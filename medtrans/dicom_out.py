"""Writing a volume as a DICOM image series (synthetic CT output, DICOM phantoms).

Each slice of the image's own grid becomes one instance, with ImagePositionPatient,
ImageOrientationPatient and PixelSpacing taken from that grid, so that a DICOM reader rebuilds the
same geometry. CT values go through RescaleIntercept/RescaleSlope (stored = HU + 1024).
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import DSfloat

import medtrans
from medtrans.fsutil import atomic_dir
from medtrans.io.dicom_scan import LINK_ATTRIBUTES

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
CT_RESCALE_INTERCEPT = -1024.0



def new_link(*, patient_id: str = "ANON", patient_name: str = "ANONYMOUS^") -> dict[str, Any]:
    """Fresh, self-consistent patient/study/frame-of-reference attributes (for input without DICOM)."""
    now = _dt.datetime.now()
    return {
        "PatientName": patient_name,
        "PatientID": patient_id,
        "PatientBirthDate": "",
        "PatientSex": "",
        "StudyInstanceUID": generate_uid(),
        "StudyID": "1",
        "StudyDate": now.strftime("%Y%m%d"),
        "StudyTime": now.strftime("%H%M%S"),
        "AccessionNumber": "",
        "ReferringPhysicianName": "",
        "FrameOfReferenceUID": generate_uid(),
        "PatientPosition": "",  # unknown without a DICOM source: Type 2, so present and empty
    }


def _right_handed(image: sitk.Image) -> sitk.Image:
    """DICOM stacks slices along row x column; a left-handed grid is flipped along z (same voxels in space)."""
    d = np.array(image.GetDirection()).reshape(3, 3)
    if np.linalg.det(d) > 0:
        return image
    return sitk.Flip(image, [False, False, True])


def write_dicom_series(
    image: sitk.Image,
    folder: str | Path,
    *,
    modality: str,
    link: dict[str, Any],
    series_description: str,
    series_number: int = 1001,
    derived: bool = False,
    extra: dict[str, Any] | None = None,
) -> list[Path]:
    """Write ``image`` as a DICOM series in ``folder`` (atomically: the folder appears complete or not at all).

    Args:
        image: the volume; CT in HU, MR in scanner units.
        folder: output folder (replaced if present).
        modality: ``'CT'`` (CT Image Storage) or ``'MR'`` (MR Image Storage).
        link: patient/study/frame-of-reference attributes (see :func:`new_link`, or a source series').
        series_description: SeriesDescription; say "synthetic" for derived data.
        series_number: SeriesNumber.
        derived: ImageType DERIVED\\SECONDARY (else ORIGINAL\\PRIMARY).
        extra: further attributes set on every instance (keyword -> value).

    Returns:
        The written files, in slice order.
    """
    modality = modality.upper()
    if modality not in ("CT", "MR"):
        raise ValueError(f"modality must be CT or MR, not {modality!r}")
    image = _right_handed(image)
    stored = _stored_values(sitk.GetArrayFromImage(image), modality)  # (z, y, x)
    now = _dt.datetime.now()
    series = {"Modality": modality, "SeriesInstanceUID": generate_uid(), "SeriesNumber": series_number,
              "SeriesDescription": series_description[:64], "SeriesDate": now.strftime("%Y%m%d"),
              "ContentDate": now.strftime("%Y%m%d"), "SeriesTime": now.strftime("%H%M%S"),
              "ContentTime": now.strftime("%H%M%S"),
              # value 3 is required by both IODs: AXIAL (a transverse stack) for CT, OTHER for MR
              "ImageType": [*(["DERIVED", "SECONDARY"] if derived else ["ORIGINAL", "PRIMARY"]),
                            "AXIAL" if modality == "CT" else "OTHER"],
              "Laterality": "",  # Type 2C: the body part is not known here, and empty means "unknown"
              "AcquisitionNumber": 1, **_MODALITY_ATTRIBUTES[modality], **(extra or {})}
    sop_class = CT_IMAGE_STORAGE if modality == "CT" else MR_IMAGE_STORAGE
    written: list[Path] = []
    folder = Path(folder)
    with atomic_dir(folder) as tmp:
        for k in range(stored.shape[0]):
            ds = _base_dataset(sop_class, link)
            for key, value in series.items():
                setattr(ds, key, value)
            _set_slice(ds, image, k, stored[k])
            out = tmp / f"{modality}{k + 1:05d}.dcm"
            ds.save_as(out, enforce_file_format=True)
            written.append(folder / out.name)
    return written


#: What each modality's instances carry beyond the common attributes (CT: HU through the rescale; MR: the
#: acquisition attributes the MR Image IOD requires, with plain values for data that was not acquired).
_MODALITY_ATTRIBUTES: dict[str, dict[str, Any]] = {
    "CT": {"RescaleIntercept": CT_RESCALE_INTERCEPT, "RescaleSlope": 1.0, "RescaleType": "HU", "KVP": ""},
    "MR": {"ScanningSequence": "GR", "SequenceVariant": "NONE", "ScanOptions": "", "MRAcquisitionType": "3D",
           "RepetitionTime": 8.0, "EchoTime": 3.0, "EchoTrainLength": 1},
}


def _stored_values(arr: np.ndarray, modality: str) -> np.ndarray:
    """Pixel values as stored (uint16): CT HU minus the rescale intercept, MR as it is."""
    shift = CT_RESCALE_INTERCEPT if modality == "CT" else 0.0
    return np.clip(np.rint(arr.astype(np.float64) - shift), 0, 65535).astype(np.uint16)


def _set_slice(ds: Dataset, image: sitk.Image, k: int, pixels: np.ndarray) -> None:
    """Slice ``k``'s geometry and pixels: position, orientation and spacing from the image's own grid."""
    d = np.array(image.GetDirection()).reshape(3, 3)
    sx, sy, sz = image.GetSpacing()
    position = image.TransformIndexToPhysicalPoint((0, 0, k))
    ds.InstanceNumber = k + 1
    ds.ImagePositionPatient = _ds(position)
    ds.ImageOrientationPatient = _ds([*d[:, 0].tolist(), *d[:, 1].tolist()])
    ds.PixelSpacing = _ds((sy, sx))  # row spacing (between rows), then column spacing
    ds.SliceThickness = ds.SpacingBetweenSlices = _ds(sz)
    ds.SliceLocation = _ds(np.dot(position, np.cross(d[:, 0], d[:, 1])))
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.tobytes()


def _ds(value: Any) -> Any:
    """Decimal String value(s) within the VR's 16 characters (a plain float repr can need 20).

    pydicom's auto-format keeps as many significant digits as fit (about 1e-12 mm here), so geometry
    read back agrees with the grid far below any tolerance a reader applies.
    """
    if np.ndim(value):
        return [DSfloat(float(v), auto_format=True) for v in value]
    return DSfloat(float(value), auto_format=True)


def _base_dataset(sop_class: str, link: dict[str, Any]) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    sop_uid = generate_uid()
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    for key in LINK_ATTRIBUTES:
        setattr(ds, key, link.get(key, ""))
    ds.PositionReferenceIndicator = ""
    ds.Manufacturer = "medtrans"
    ds.ManufacturerModelName = "medtrans"
    ds.SoftwareVersions = medtrans.__version__
    ds.PatientOrientation = ""
    return ds
