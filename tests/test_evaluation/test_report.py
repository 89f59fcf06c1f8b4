"""evaluate: outputs, report structure, missing/mismatched cases listed rather than crashing."""

from __future__ import annotations

import csv
import json
import re
import shutil

import numpy as np
import SimpleITK as sitk

from medtrans.evaluation.evaluate import evaluate


def test_evaluate_outputs_and_report(aligned_cohort, tmp_path):
    pred = tmp_path / "pred"
    cases = sorted(p.name for p in aligned_cohort.iterdir())
    for i, name in enumerate(cases[:3]):
        ct = sitk.ReadImage(str(aligned_cohort / name / "ct.nii.gz"))
        noisy = sitk.Cast(ct, sitk.sitkFloat32) + float(20 * (i + 1))
        (pred / name).mkdir(parents=True)
        if i == 1:  # wrong grid
            noisy = sitk.Resample(noisy, [s // 2 for s in ct.GetSize()], sitk.Transform(), sitk.sitkLinear,
                                  ct.GetOrigin(), [2 * s for s in ct.GetSpacing()], ct.GetDirection())
        if i == 2:
            arr = sitk.GetArrayFromImage(noisy)
            arr[3, 3, 3] = np.nan
            nan = sitk.GetImageFromArray(arr)
            nan.CopyInformation(noisy)
            noisy = nan
        sitk.WriteImage(noisy, str(pred / name / "sct.nii.gz"))
    shutil.copytree(aligned_cohort, tmp_path / "ref")
    summary = evaluate(pred, tmp_path / "ref", tmp_path / "eval", progress=False)
    problems = {p["case"]: p["problem"] for p in summary["problems"]}
    assert summary["n_evaluated"] == 1 and len(problems) == 3
    assert "different grids" in problems[cases[1]] and "size" in problems[cases[1]]
    assert "NaN" in problems[cases[2]]
    assert "no sCT" in problems[cases[3]]
    with open(tmp_path / "eval" / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["case", "split", "flags", "mae", "psnr", "ssim", "me", "mae_air", "mae_soft", "mae_bone",
                             "bone_dice", "bone_hd95_mm"]
    assert 0.5 < float(rows[0]["bone_dice"]) <= 1 and float(rows[0]["bone_hd95_mm"]) >= 0  # the phantom has a skull
    assert float(rows[0]["me"]) == np.float64(20.0)
    s = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert set(s["metrics"]["mae"]) >= {"n", "mean", "std", "median", "iqr", "min", "max", "ci95"}
    html = (tmp_path / "eval" / "report.html").read_text()
    for anchor in ("id='summary'", "id='cases'", "id='plots'", "id='figures'", "id='problems'"):
        assert anchor in html
    assert len(re.findall(r"src='data:image/png;base64,", html)) == 3  # plots + montage + histograms
    assert "PHANTOM^" not in html  # no identifiers
    # --resample puts the mismatched sCT on the CT grid instead of failing
    again = evaluate(pred, tmp_path / "ref", tmp_path / "eval2", resample=True, report=False, progress=False)
    assert again["n_evaluated"] == 2
