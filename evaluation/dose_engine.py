"""The one place that talks to pyRadPlan (the optional extra ``medtrans[dose]``): optimize on the CT, recompute the
same beams, spots and weights on the sCT. Everything else of the dose evaluation is in :mod:`.dose`."""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterator, Sequence

import numpy as np
import SimpleITK as sitk


def _image(array: np.ndarray, spacing_mm: float, pixel: int) -> sitk.Image:
    img = sitk.Cast(sitk.GetImageFromArray(array.astype(np.float32)), pixel)
    img.SetSpacing((spacing_mm,) * 3)
    return img


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """pyRadPlan prints per-ray progress bars and division warnings of its ray tracer; medtrans shows its own."""
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        yield


def _structures(ct, target: np.ndarray, body: np.ndarray, spacing_mm: float, prescription: float):
    from pyRadPlan.cst import create_cst, create_voi
    from pyRadPlan.optimization.objectives import SquaredDeviation, SquaredOverdosing

    tv = create_voi(name="TARGET", voi_type="TARGET", ct_image=ct,
                    mask=_image(target.astype(np.uint8), spacing_mm, sitk.sitkUInt8))
    rest = body & ~target
    bv = create_voi(name="BODY", voi_type="OAR", ct_image=ct,
                    mask=_image(rest.astype(np.uint8), spacing_mm, sitk.sitkUInt8))
    cst = create_cst(vois=[tv, bv], ct=ct)
    cst.vois[0].objectives = [SquaredDeviation(priority=100.0, d_ref=prescription)]
    cst.vois[1].objectives = [SquaredOverdosing(priority=10.0, d_max=0.5 * prescription)]
    return cst


def _plan(modality: str, gantry: Sequence[float], ct, hlut: np.ndarray | None):
    from pyRadPlan import IonPlan, PhotonPlan

    pln = PhotonPlan() if modality == "photon" else IonPlan(radiation_mode="protons", machine="Generic")
    pln.prop_stf = {"gantry_angles": list(gantry), "couch_angles": [0.0] * len(gantry)}
    pln.prop_opt = {"solver": "scipy", "max_iter": 100}
    pln.prop_dose_calc = {"dose_grid": ct.grid, **({"hlut": hlut} if hlut is not None else {})}
    return pln


def optimize_and_forward(grids: dict[str, np.ndarray], *, modality: str, spacing_mm: float, prescription: float,
                         gantry: Sequence[float], hlut: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Doses (Gy, z-y-x arrays on the dose grid) of a plan optimized on the CT, on the CT and on the sCT."""
    from pyRadPlan import calc_dose_forward, calc_dose_influence, fluence_optimization, generate_stf
    from pyRadPlan.ct import create_ct

    with _quiet():
        ct = create_ct(cube_hu=_image(grids["ct"], spacing_mm, sitk.sitkFloat32))
        sct = create_ct(cube_hu=_image(grids["sct"], spacing_mm, sitk.sitkFloat32))
        cst = _structures(ct, grids["target"], grids["body"], spacing_mm, prescription)
        pln = _plan(modality, gantry, ct, hlut)
        stf = generate_stf(ct, cst, pln)
        dij = calc_dose_influence(ct, cst, stf, pln)
        weights = fluence_optimization(ct, cst, stf, dij, pln)
        dose_ct = sitk.GetArrayFromImage(dij.compute_result_ct_grid(weights)["physical_dose"])
        dose_sct = sitk.GetArrayFromImage(calc_dose_forward(sct, cst, stf, pln, weights)["physical_dose"])
    return dose_ct.astype(np.float32), dose_sct.astype(np.float32)
