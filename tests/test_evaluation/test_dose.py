"""Dose evaluation (evaluate --dose): a plan made on the CT, recomputed unchanged on the sCT."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from medtrans.errors import InputError, MedtransError
from medtrans.evaluation.dose import DoseOptions, case_dose, parse_modalities

GRID_MM = 5.0  # coarse: seconds per plan on the test phantoms


def cylinder(shape=(36, 44, 44), spacing=(4.0, 4.0, 5.0)) -> tuple[sitk.Image, sitk.Image, np.ndarray]:
    """A water cylinder (radius 80 mm) with a bone ring, on a couch slab outside the body; array order z, y, x."""
    _z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    r = np.broadcast_to(np.hypot((y - shape[1] / 2) * spacing[1], (x - shape[2] / 2) * spacing[0]), shape)
    hu = np.full(shape, -1000.0, np.float32)
    body = r < 80
    hu[body] = 20.0
    hu[body & (r > 72)] = 900.0
    hu[:, :3] = 300.0  # couch below the body: outside the mask, removed before planning

    def image(a: np.ndarray) -> sitk.Image:
        img = sitk.GetImageFromArray(a.astype(np.float32))
        img.SetSpacing(spacing)
        img.SetOrigin((-88.0, -88.0, -90.0))
        return img

    return image(hu), image(body.astype(np.float32)) > 0, hu


def test_an_sct_equal_to_the_ct_passes_everything():
    ct, body, _ = cylinder()
    metrics, figure = case_dose(ct, ct, body, None, modalities=("photon", "proton"), spacing_mm=GRID_MM)
    for m in ("photon", "proton"):
        assert metrics[f"{m}_gamma_22"] == 100.0 and metrics[f"{m}_gamma_33"] == 100.0
        # (the CT's dose comes from the optimization's influence matrix, the sCT's from a forward calculation: they
        # agree to ~1e-5 % of the prescription on the same image)
        assert metrics[f"{m}_dose_mae_pct"] == pytest.approx(0.0, abs=1e-3)
        assert all(metrics[f"{m}_{k}_diff_pct"] == pytest.approx(0.0, abs=1e-3)
                   for k in ("d98", "d95", "d50", "d2", "dmean"))
        dose_ct, _ = figure["doses"][m]
        target_dose = dose_ct[figure["target"]]
        assert abs(np.median(target_dose) - figure["prescription"]) < 0.1 * figure["prescription"]  # a real plan
    assert figure["target_record"]["kind"] == "default sphere"


def _distal_r50(profile: np.ndarray, spacing: float) -> float:
    """Depth (mm from the first voxel) where the dose falls below 50 % of its maximum beyond the maximum."""
    peak = int(np.argmax(profile))
    half = profile[peak] / 2
    beyond = np.flatnonzero(profile[peak:] < half)
    k = peak + int(beyond[0])
    a, b = profile[k - 1], profile[k]
    return (k - 1 + (a - half) / (a - b)) * spacing


def test_a_soft_tissue_error_hits_protons_harder_and_shifts_their_range_as_the_table_predicts():
    """+150 HU in soft tissue: proton gamma falls more than photon gamma, and a single proton field's distal edge
    moves by the depth the stopping-power table predicts (water 1.000 -> 1.116 relative stopping power)."""
    from medtrans.evaluation.dose import dose_grid, on_dose_grid
    from medtrans.evaluation.dose_engine import optimize_and_forward

    ct, body, hu = cylinder()
    soft = (hu > -200) & (hu < 300)
    wrong = sitk.GetImageFromArray(np.where(soft, hu + 150, hu).astype(np.float32))
    wrong.CopyInformation(ct)
    metrics, _ = case_dose(ct, wrong, body, None, modalities=("photon", "proton"), spacing_mm=GRID_MM)
    print("gamma 2%/2mm photon", metrics["photon_gamma_22"], "proton", metrics["proton_gamma_22"])
    assert metrics["proton_gamma_22"] < metrics["photon_gamma_22"] - 5
    assert metrics["proton_d98_diff_pct"] < metrics["photon_d98_diff_pct"] < 0  # less dose to the target

    # one field along x through the target: where does its distal edge end, on CT and sCT?
    from medtrans.evaluation.dose import default_target

    target, _record = default_target(body)
    grids = on_dose_grid(ct, wrong, body, target, dose_grid(body, GRID_MM))
    dose_ct, dose_sct = optimize_and_forward(grids, modality="proton", spacing_mm=GRID_MM, prescription=2.0,
                                             gantry=(90.0,), hlut=None)
    z, y = (round(np.mean(i)) for i in np.nonzero(grids["target"])[:2])
    line_ct, line_sct, body_line = dose_ct[z, y], dose_sct[z, y], grids["body"][z, y]
    if line_ct[: line_ct.size // 2].sum() < line_ct[line_ct.size // 2:].sum():  # the beam travels towards -x
        line_ct, line_sct, body_line = line_ct[::-1], line_sct[::-1], body_line[::-1]
    entry = int(np.flatnonzero(body_line)[0])
    r_ct, r_sct = _distal_r50(line_ct, GRID_MM), _distal_r50(line_sct, GRID_MM)
    depth_ct = r_ct - entry * GRID_MM  # physical depth of the distal edge in the body
    # water-equivalent depth is conserved; the ring of bone is unchanged, the soft tissue's stopping power rises
    spr = lambda h: float(np.interp(h, [-1024, -999, -90, -45, 0, 100, 350, 3000],  # noqa: E731
                                    [0.001, 0.001, 0.95, 0.99, 1, 1.095, 1.199, 2.505]))
    ring = 8.0  # mm of the 900 HU ring crossed before the soft tissue
    soft_depth = depth_ct - ring
    predicted = soft_depth * (1 - spr(20) / spr(170))
    measured = r_ct - r_sct
    print(f"proton distal edge: {measured:.1f} mm shallower on the sCT; predicted {predicted:.1f} mm "
          f"(soft-tissue depth {soft_depth:.0f} mm, table {spr(20):.3f} -> {spr(170):.3f})")
    assert measured == pytest.approx(predicted, abs=GRID_MM / 2)


def test_without_the_extra_dose_is_one_clear_line(monkeypatch, tmp_path):
    from medtrans.evaluation.evaluate import evaluate

    monkeypatch.setitem(sys.modules, "pyRadPlan", None)  # import fails as if not installed
    (tmp_path / "pred").mkdir()
    with pytest.raises(MedtransError, match=r"--dose needs pyRadPlan: install the optional extra: pip install "
                                            r"'medtrans\[dose\]'"):
        evaluate(tmp_path / "pred", tmp_path, tmp_path / "out", dose=DoseOptions(("photon",)), progress=False)
    assert not (tmp_path / "out").exists()
    with pytest.raises(MedtransError, match="photon and/or proton"):
        parse_modalities("electron")


def test_evaluate_dose_from_the_cli_with_a_target_and_a_scanner_table(tmp_path):
    ct, body, hu = cylinder()
    case = tmp_path / "ref" / "p1"
    case.mkdir(parents=True)
    sitk.WriteImage(ct, str(case / "ct.nii.gz"))
    sitk.WriteImage(sitk.Cast(body, sitk.sitkUInt8), str(case / "mask.nii.gz"))
    target = sitk.GetImageFromArray(np.zeros(hu.shape, np.uint8))
    target.CopyInformation(ct)
    target[18:26, 18:26, 14:20] = 1  # x, y, z index ranges: a box in the water
    sitk.WriteImage(target, str(case / "target.nii.gz"))
    (tmp_path / "pred" / "p1").mkdir(parents=True)
    sct = sitk.GetImageFromArray(np.where((hu > -200) & (hu < 300), hu + 150, hu).astype(np.float32))
    sct.CopyInformation(ct)
    sitk.WriteImage(sct, str(tmp_path / "pred" / "p1" / "sct.nii.gz"))
    table = tmp_path / "scanner.csv"
    table.write_text("-1024,0.001\n0,1.0\n1000,1.5\n3000,2.5\n")
    r = subprocess.run([sys.executable, "-m", "medtrans", "evaluate", "--pred", str(tmp_path / "pred"), "--ref",
                        str(tmp_path / "ref"), "--out", str(tmp_path / "eval"), "--dose", "photon,proton",
                        "--dose-grid-mm", str(GRID_MM), "--hlut", str(table)],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    with open(tmp_path / "eval" / "metrics.csv") as fh:
        row = next(csv.DictReader(fh))
    assert 0 <= float(row["proton_gamma_22"]) < 100 and 0 <= float(row["photon_gamma_33"]) <= 100
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["dose"]["hlut"] == str(table) and summary["dose"]["targets"]["p1"]["kind"] == "target.nii.gz"
    html = (tmp_path / "eval" / "report.html").read_text()
    assert "id='dose'" in html and "alt='dose p1'" in html
    bad = tmp_path / "bad.csv"
    bad.write_text("0,1\n-100,0.9\n")
    r = subprocess.run([sys.executable, "-m", "medtrans", "evaluate", "--pred", str(tmp_path / "pred"), "--ref",
                        str(tmp_path / "ref"), "--out", str(tmp_path / "eval2"), "--dose", "proton", "--hlut",
                        str(bad)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "HU strictly increasing" in r.stderr and "bad.csv" in r.stderr, r.stderr


def test_the_target_comes_from_an_rtstruct_region_when_named(tmp_path):
    from medtrans.evaluation.dose import case_target
    from tests.test_medtrans.test_rtstruct import ct_grid, write_rtstruct

    ct = ct_grid()
    case = tmp_path / "p1"
    case.mkdir()
    assert case_target(case, ct, roi=None) == (None, {})  # nothing given: the default sphere follows
    with pytest.raises(InputError, match="--target-roi 'PTV_60' was given but the case has no rtstruct.dcm"):
        case_target(case, ct, roi="PTV_60")
    write_rtstruct(case / "rtstruct.dcm", ct)
    target, record = case_target(case, ct, roi="PTV_60")
    assert record == {"kind": "RTSTRUCT region 'PTV_60'"} and sitk.GetArrayFromImage(target).sum() > 10_000
    sitk.WriteImage(target, str(case / "target.nii.gz"))
    target, record = case_target(case, ct, roi=None)
    assert record == {"kind": "target.nii.gz"} and target.GetSize() == ct.GetSize()


def test_gamma_maps_fail_where_the_dose_moved_and_the_figure_draws_them():
    from medtrans.evaluation.dose import gamma_plane
    from medtrans.evaluation.report_dose import dose_figure

    ref = np.zeros((30, 40, 40), np.float32)
    ref[8:22, 12:28, 12:28] = 2.0
    moved = np.roll(ref, 1, axis=2)  # 3 mm along x on a 3 mm grid: the edges fail 2%/2mm, the plateau passes
    for axis in (0, 1, 2):
        assert np.nanmax(gamma_plane(ref, ref, 3.0, axis=axis, index=15, percent=2, mm=2, prescription=2.0)) == 0
    g = gamma_plane(ref, moved, 3.0, axis=0, index=15, percent=2, mm=2, prescription=2.0)
    assert g.shape == (40, 40) and g[20, 12] > 1 and g[20, 20] == 0 and np.isnan(g[0, 0])  # NaN below the cut-off
    target = np.zeros(ref.shape, bool)
    target[12:18, 16:24, 16:24] = True
    uri = dose_figure({"doses": {"proton": (ref, moved)}, "target": target, "body": np.ones(ref.shape, bool),
                       "prescription": 2.0, "spacing_mm": 3.0})
    assert uri.startswith("data:image/png;base64,") and len(uri) > 20_000
