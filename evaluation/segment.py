"""The one place that talks to TotalSegmentator (the optional extra ``medtrans[segment]``): organ and bone labels of
a CT or an sCT, as SynthRAD2025 makes them (the "total" task, 3 mm model, TotalSegmentator's ``--fast``).

Nothing is downloaded at run time: :func:`require_segmenter` checks that the package and the model's weights are
installed before anything is read, and otherwise says in one line what to install. The reference labels of a case
are its ``segmentation.*`` file when there is one (e.g. made once with TotalSegmentator on the CT), else
TotalSegmentator is run on the CT too. :func:`medtrans.evaluation.anatomy.segment_overlap` scores them.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from pathlib import Path

import SimpleITK as sitk

from medtrans.errors import MedtransError

#: The model SynthRAD2025 segments with: TotalSegmentator's "total" task at 3 mm (task 297, ``fast=True``).
MODEL_FOLDER_PREFIX = "Dataset297_TotalSegmentator_total_3mm"
REGIONS = ("AB", "HN", "TH")
EXTRA_HINT = "pip install 'medtrans[segment]'"
WEIGHTS_HINT = ("download them once with `totalseg_download_weights -t total_fast` (or put them there with "
                "totalseg_import_weights); set TOTALSEG_WEIGHTS_PATH to use another folder")
SEGMENTATION_STEM = "segmentation"


def require_segmenter() -> Path:
    """The folder of the 3 mm "total" weights, or one line naming what to install (package or weights)."""
    try:
        from totalsegmentator.config import get_weights_dir
    except ImportError:
        raise MedtransError(f"--segment needs TotalSegmentator: {EXTRA_HINT}") from None
    weights = Path(get_weights_dir())
    found = sorted(weights.glob(f"{MODEL_FOLDER_PREFIX}*")) if weights.is_dir() else []
    if not any(any(f.rglob("checkpoint_final.pth")) for f in found):
        raise MedtransError(f"--segment needs TotalSegmentator's 'total' 3 mm weights ({MODEL_FOLDER_PREFIX}*) in "
                            f"{weights}, which has none: {WEIGHTS_HINT}; nothing is downloaded at run time")
    return found[0]


def segment(image: sitk.Image, *, device: str = "cpu") -> sitk.Image:
    """TotalSegmentator's labels (one label map, its "total" numbering) of a CT or sCT, on the image's grid."""
    import nibabel as nib
    from totalsegmentator.python_api import totalsegmentator

    require_segmenter()
    with tempfile.TemporaryDirectory(prefix="medtrans-seg-") as tmp:
        src, out = Path(tmp) / "image.nii.gz", Path(tmp) / "labels.nii.gz"
        sitk.WriteImage(sitk.Cast(image, sitk.sitkInt16), str(src))
        with contextlib.redirect_stdout(io.StringIO()):  # its banners; medtrans shows its own progress
            labels = totalsegmentator(src, None, ml=True, fast=True, quiet=True, device=device)
        nib.save(labels, out)
        result = sitk.ReadImage(str(out))
    return sitk.Resample(result, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
