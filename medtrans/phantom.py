"""Deterministic synthetic paired MR/CT head subjects for the demo and the tests.

The anatomy is defined analytically in physical (LPS, mm) space: nested ellipsoidal shells for skin,
fat, the outer and inner cortical tables with marrow (diploe) between them, CSF, grey and white matter,
ventricles, and air sinuses in the frontal bone. Both modalities sample the same anatomy, so a CT on its
own grid with a known rigid misalignment is exact ground truth for registration tests.

The MR is T1-like: fat and marrow bright, cortical bone as dark as air, so intensity alone cannot tell
bone from air (the point of MR->CT translation). MR has a smooth multiplicative bias field, Rician
noise and a per-subject gain; CT is in HU with Gaussian noise. These are synthetic phantoms, not data.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from medtrans.dicom_out import new_link, write_dicom_series
from medtrans.fsutil import write_json
from medtrans.io import write_volume

# tissue label -> (CT HU, T1-like MR signal)
TISSUES: dict[str, tuple[float, float]] = {
    "air": (-1000.0, 0.0),
    "skin": (40.0, 0.55),
    "fat": (-100.0, 1.0),
    "cortical": (1300.0, 0.04),
    "marrow": (450.0, 0.72),
    "csf": (8.0, 0.12),
    "grey": (40.0, 0.45),
    "white": (28.0, 0.70),
    "sinus": (-950.0, 0.0),
}
_NAMES = list(TISSUES)
_HU = np.array([TISSUES[n][0] for n in _NAMES], np.float32)
_MR = np.array([TISSUES[n][1] for n in _NAMES], np.float32)

MR_GRID = {"size": (112, 128, 52), "spacing": (1.6, 1.6, 3.5)}
CT_GRID = {"size": (140, 156, 70), "spacing": (1.3, 1.3, 2.5)}


@dataclass(frozen=True)
class Subject:
    """Per-subject anatomy parameters (all lengths in mm)."""

    axes: tuple[float, float, float]
    skull: float  # cortical+marrow thickness scale
    ventricle: float
    sinus: tuple[float, float, float]
    tilt: float  # radians, anatomy rotation about x
    gain: float
    bias: tuple[float, ...]

    @classmethod
    def sample(cls, rng: np.random.Generator) -> Subject:
        return cls(
            axes=(float(rng.uniform(66, 76)), float(rng.uniform(80, 92)), float(rng.uniform(68, 78))),
            skull=float(rng.uniform(0.8, 1.25)),
            ventricle=float(rng.uniform(0.7, 1.3)),
            sinus=(float(rng.uniform(9, 15)), float(rng.uniform(5, 9)), float(rng.uniform(7, 12))),
            tilt=float(rng.uniform(-0.12, 0.12)),
            gain=float(rng.uniform(300, 1500)),
            bias=tuple(float(v) for v in rng.uniform(-0.2, 0.2, 5)),
        )


def labels_at(points: np.ndarray, s: Subject) -> np.ndarray:
    """Tissue label index at each physical point (N, 3), head centred at the origin."""
    c, sn = math.cos(s.tilt), math.sin(s.tilt)
    x = points[:, 0]
    y = c * points[:, 1] - sn * points[:, 2]
    z = sn * points[:, 1] + c * points[:, 2]
    a, b, cz = s.axes
    r = np.sqrt((x / a) ** 2 + (y / b) ** 2 + (z / cz) ** 2)
    lab = np.zeros(len(points), np.uint8)
    k = s.skull
    shells = [  # (outer radius, tissue), outermost first
        (1.0, "skin"), (0.975, "fat"), (0.945, "cortical"), (0.945 - 0.022 * k, "marrow"),
        (0.945 - 0.06 * k, "cortical"), (0.945 - 0.08 * k, "csf"), (0.945 - 0.1 * k, "grey"),
    ]
    for radius, name in shells:
        lab[r <= radius] = _NAMES.index(name)
    # white matter: a lobed core inside the grey matter
    wobble = 0.07 * np.sin(5 * np.arctan2(y, x)) * np.cos(3 * np.arctan2(z, np.hypot(x, y)))
    lab[r <= 0.62 + wobble] = _NAMES.index("white")
    # lateral ventricles
    v = s.ventricle
    for side in (-1, 1):
        rv = np.sqrt(((x - side * 9 * v) / (5 * v)) ** 2 + ((y + 5) / (20 * v)) ** 2 + ((z - 8) / (9 * v)) ** 2)
        lab[rv <= 1] = _NAMES.index("csf")
    # frontal sinus: air pocket wrapped in bone, anterior (-y in LPS) and inferior
    sa, sb, sc = s.sinus
    centre = np.array([0.0, -0.86 * b, -0.35 * cz])
    rs = np.sqrt(((x - centre[0]) / sa) ** 2 + ((y - centre[1]) / sb) ** 2 + ((z - centre[2]) / sc) ** 2)
    lab[(rs <= 1.45) & (r <= 0.99)] = _NAMES.index("cortical")
    lab[rs <= 1.0] = _NAMES.index("sinus")
    return lab


def _grid(size: tuple[int, ...], spacing: tuple[float, ...], rng: np.random.Generator,
          direction: tuple[float, ...] = (1, 0, 0, 0, 1, 0, 0, 0, 1)) -> sitk.Image:
    ref = sitk.Image([int(v) for v in size], sitk.sitkFloat32)
    ref.SetSpacing([float(v) for v in spacing])
    ref.SetDirection(direction)
    extent = (np.array(size) - 1) * np.array(spacing)
    origin = -np.array(direction).reshape(3, 3) @ (extent / 2) + rng.uniform(-2, 2, 3)
    ref.SetOrigin(origin.tolist())
    return ref


def _physical_points(ref: sitk.Image) -> np.ndarray:
    """Physical coordinates of every voxel, in (z, y, x) array order, as (N, 3)."""
    size = ref.GetSize()
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in size[::-1]], indexing="ij"), -1).reshape(-1, 3)[:, ::-1]
    d = np.array(ref.GetDirection()).reshape(3, 3)
    return (idx * np.array(ref.GetSpacing())) @ d.T + np.array(ref.GetOrigin())


def _image_like(ref: sitk.Image, arr: np.ndarray) -> sitk.Image:
    img = sitk.GetImageFromArray(arr.reshape(ref.GetSize()[::-1]))
    img.CopyInformation(ref)
    return img


def _ct_image(ref: sitk.Image, points: np.ndarray, s: Subject, rng: np.random.Generator) -> sitk.Image:
    hu = _HU[labels_at(points, s)]
    img = _image_like(ref, hu)
    img = sitk.SmoothingRecursiveGaussian(img, [0.6 * sp for sp in ref.GetSpacing()])  # scanner PSF
    arr = sitk.GetArrayFromImage(img) + rng.normal(0, 15, ref.GetSize()[::-1]).astype(np.float32)
    out = _image_like(ref, np.clip(np.rint(arr), -1024, 3071).astype(np.int16))
    return out


def _mr_image(ref: sitk.Image, points: np.ndarray, s: Subject, rng: np.random.Generator) -> sitk.Image:
    sig = _MR[labels_at(points, s)]
    img = sitk.SmoothingRecursiveGaussian(_image_like(ref, sig), [0.6 * sp for sp in ref.GetSpacing()])
    sig = sitk.GetArrayFromImage(img).reshape(-1)
    scale = np.abs(points).max(axis=0) + 1e-6
    u = points / scale
    c = s.bias
    bias = np.exp(c[0] * u[:, 0] + c[1] * u[:, 1] + c[2] * u[:, 2] + c[3] * u[:, 0] * u[:, 1] + c[4] * u[:, 2] ** 2)
    sig = sig * bias
    sigma = 0.025
    noisy = np.sqrt((sig + rng.normal(0, sigma, sig.shape)) ** 2 + rng.normal(0, sigma, sig.shape) ** 2)
    return _image_like(ref, np.rint(noisy * s.gain).astype(np.int16).reshape(ref.GetSize()[::-1]))


def random_rigid(rng: np.random.Generator, *, max_deg: float = 5.0, max_mm: float = 8.0) -> sitk.Euler3DTransform:
    """A random rigid transform (about the head centre at the origin)."""
    t = sitk.Euler3DTransform()
    t.SetCenter((0.0, 0.0, 0.0))
    t.SetRotation(*(rng.uniform(-max_deg, max_deg, 3) * math.pi / 180).tolist())
    t.SetTranslation(rng.uniform(-max_mm, max_mm, 3).tolist())
    return t


def make_case(
    out: Path, *, seed: int, aligned: bool, fmt: str = "nifti", case_name: str = "case"
) -> dict[str, object]:
    """Write one phantom subject to ``out`` and return its ground-truth record.

    Args:
        out: case folder.
        seed: subject seed (the same seed gives the same files).
        aligned: SynthRAD layout (mr, ct, mask on one grid) instead of a raw, misaligned export.
        fmt: ``'nifti'``, ``'mha'`` or ``'dicom'``.
        case_name: used for the DICOM PatientID of the synthetic subject.
    """
    rng, s, mr_ref = _subject(seed)
    mr_pts = _physical_points(mr_ref)
    mr = _mr_image(mr_ref, mr_pts, s, rng)
    truth: dict[str, object] = {"seed": seed, "aligned": aligned, "synthetic_phantom": True}
    if aligned:
        ct = _ct_image(mr_ref, mr_pts, s, rng)
        mask = _image_like(mr_ref, (labels_at(mr_pts, s) > 0).astype(np.uint8))
    else:
        t = random_rigid(rng)  # maps MR-space points to CT-space points
        ct_ref = _grid(CT_GRID["size"], CT_GRID["spacing"], rng)
        ct_pts = _physical_points(ct_ref)
        inv = t.GetInverse()
        m = np.array(inv.GetMatrix()).reshape(3, 3)
        anatomy_pts = (ct_pts - np.array(inv.GetCenter())) @ m.T + np.array(inv.GetCenter()) + np.array(
            inv.GetTranslation())
        ct = _ct_image(ct_ref, anatomy_pts, s, rng)
        mask = None
        truth["transform"] = {"type": "Euler3DTransform", "center": list(t.GetCenter()),
                              "parameters": list(t.GetParameters())}
    out.mkdir(parents=True, exist_ok=True)
    if fmt == "dicom":
        link = {**new_link(patient_id=f"PHANTOM-{case_name}", patient_name=f"PHANTOM^{case_name}"),
                "PatientPosition": "HFS"}  # head first, supine: the phantom's anatomy is in patient coordinates
        write_dicom_series(mr, out / "mr", modality="MR", link=link, series_description="phantom T1",
                           series_number=1)
        write_dicom_series(ct, out / "ct", modality="CT", link=link, series_description="phantom CT",
                           series_number=2)
        if mask is not None:
            write_volume(mask, out / "mask.nii.gz")
    else:
        ext = ".nii.gz" if fmt == "nifti" else ".mha"
        write_volume(mr, out / f"mr{ext}")
        write_volume(ct, out / f"ct{ext}")
        if mask is not None:
            write_volume(mask, out / f"mask{ext}")
    write_json(out / "phantom_truth.json", truth)
    return truth


def _subject(seed: int) -> tuple[np.random.Generator, Subject, sitk.Image]:
    """The first draws of subject ``seed``: its anatomy and MR grid (and the generator, for what follows)."""
    rng = np.random.default_rng(seed)
    s = Subject.sample(rng)
    return rng, s, _grid(MR_GRID["size"], MR_GRID["spacing"], rng)


def tissue_labels(seed: int) -> np.ndarray:
    """Tissue labels (indices into ``TISSUES``) of subject ``seed`` on its MR grid, as a (z, y, x) array."""
    _, s, mr_ref = _subject(seed)
    return labels_at(_physical_points(mr_ref), s).reshape(mr_ref.GetSize()[::-1])


def make_cohort(out: str | Path, *, cases: int, seed: int = 0, aligned: bool = False, fmt: str = "nifti") -> list[Path]:
    """Write ``cases`` phantom subjects ``out/phantom_000`` ... and return their folders."""
    if fmt not in ("nifti", "mha", "dicom"):
        raise ValueError(f"format must be nifti, mha or dicom, not {fmt!r}")
    out = Path(out)
    folders = []
    for i in range(cases):
        name = f"phantom_{i:03d}"
        make_case(out / name, seed=seed * 1000 + i, aligned=aligned, fmt=fmt, case_name=name)
        folders.append(out / name)
    return folders


def truth_transform(case_dir: Path) -> sitk.Euler3DTransform | None:
    """The known MR->CT rigid transform of a misaligned phantom case (None for an aligned one)."""
    rec = json.loads((case_dir / "phantom_truth.json").read_text())
    if "transform" not in rec:
        return None
    t = sitk.Euler3DTransform()
    t.SetCenter(rec["transform"]["center"])
    t.SetParameters(rec["transform"]["parameters"])
    return t
