"""Organ and bone overlap (evaluate --segment): SynthRAD2025's classes scored with MONAI on TotalSegmentator labels.

TotalSegmentator's weights are not in CI (nor downloaded at run time), so the segmenter itself is replaced here by a
HU-threshold labeller; what is tested is everything medtrans does around it: which classes count, the per-class
Dice/HD95 and their means, the case's own reference segmentation, the columns, and the one-line errors.
"""

from __future__ import annotations

import csv
import math
import sys
import types

import numpy as np
import pytest
import SimpleITK as sitk

from medtrans.errors import MedtransError
from medtrans.evaluation.anatomy import SEGMENT_CLASSES, segment_overlap

BRAIN, SKULL, TRACHEA = 90, 91, 16


def test_only_the_regions_classes_present_in_the_reference_are_scored():
    ref = np.zeros((20, 30, 30), np.uint8)
    ref[5:15, 5:25, 5:12] = SKULL
    ref[5:15, 5:25, 14:25] = BRAIN
    ref[0:2, 0:2, 0:2] = 7  # not a head-and-neck class: ignored
    pred = ref.copy()
    pred[5:15, 5:25, 14:16] = 0  # two of the brain's 11 columns missing
    scores, per_class = segment_overlap(ref, pred, classes=SEGMENT_CLASSES["HN"], spacing=(0.8, 1.0, 2.0))
    assert set(per_class) == {BRAIN, SKULL} and scores["seg_classes"] == 2
    assert per_class[SKULL] == (1.0, 0.0)
    assert per_class[BRAIN][0] == pytest.approx(2 * 9 / 20)
    assert per_class[BRAIN][1] == pytest.approx(2 * 0.8)  # two columns along x at 0.8 mm
    assert scores["seg_dice"] == pytest.approx((1.0 + 0.9) / 2)
    empty, none = segment_overlap(ref, pred, classes=(TRACHEA,), spacing=(1, 1, 1))
    assert none == {} and empty["seg_classes"] == 0 and math.isnan(empty["seg_dice"])
    lost, _ = segment_overlap(ref, np.zeros_like(ref), classes=SEGMENT_CLASSES["HN"], spacing=(1, 1, 1))
    assert lost["seg_dice"] == 0.0 and math.isnan(lost["seg_hd95_mm"])  # the official code: Dice 0 when missed


def test_without_totalsegmentator_or_its_weights_it_is_one_clear_line(monkeypatch, tmp_path):
    from medtrans.evaluation.evaluate import evaluate

    (tmp_path / "pred").mkdir()
    monkeypatch.setitem(sys.modules, "totalsegmentator.config", None)  # import fails as if not installed
    with pytest.raises(MedtransError, match=r"--segment needs TotalSegmentator: pip install 'medtrans\[segment\]'"):
        evaluate(tmp_path / "pred", tmp_path, tmp_path / "out", segment="HN", progress=False)
    fake = types.ModuleType("totalsegmentator.config")
    fake.get_weights_dir = lambda: tmp_path / "weights"
    monkeypatch.setitem(sys.modules, "totalsegmentator.config", fake)
    with pytest.raises(MedtransError, match=r"'total' 3 mm weights .*totalseg_download_weights -t total_fast.*"
                                            r"nothing is downloaded at run time"):
        evaluate(tmp_path / "pred", tmp_path, tmp_path / "out", segment="HN", progress=False)
    with pytest.raises(MedtransError, match="--segment takes a SynthRAD2025 region: AB, HN, TH"):
        evaluate(tmp_path / "pred", tmp_path, tmp_path / "out", segment="brain", progress=False)
    assert not (tmp_path / "out").exists()


def threshold_labeller(image: sitk.Image, **_: object) -> sitk.Image:
    """Stands in for TotalSegmentator: skull is >= 300 HU, brain 0-100 HU."""
    a = sitk.GetArrayFromImage(image)
    labels = np.where(a >= 300, SKULL, np.where((a > 0) & (a < 100), BRAIN, 0)).astype(np.uint8)
    out = sitk.GetImageFromArray(labels)
    out.CopyInformation(image)
    return out


def test_evaluate_scores_the_scts_labels_against_the_cts_or_the_cases_own(monkeypatch, tmp_path):
    import medtrans.evaluation.segment as seg
    from medtrans.evaluation.evaluate import evaluate
    from medtrans.phantom import make_cohort

    calls = []
    monkeypatch.setattr(seg, "require_segmenter", lambda: tmp_path)
    monkeypatch.setattr(seg, "segment", lambda image, **kw: calls.append(1) or threshold_labeller(image))
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    make_cohort(ref, cases=2, seed=3, aligned=True)
    for case in sorted(p.name for p in ref.iterdir()):  # an sCT one voxel off along x: the labels move with it
        ct = sitk.ReadImage(str(ref / case / "ct.nii.gz"))
        moved = sitk.GetImageFromArray(np.roll(sitk.GetArrayFromImage(ct), 1, axis=2))
        moved.CopyInformation(ct)
        (pred / case).mkdir(parents=True)
        sitk.WriteImage(moved, str(pred / case / "sct.nii.gz"))
    summary = evaluate(pred, ref, tmp_path / "eval", segment="HN", progress=False, report=False)
    with open(tmp_path / "eval" / "metrics.csv") as fh:
        rows = {r["case"]: r for r in csv.DictReader(fh)}
    assert len(calls) == 4  # CT and sCT of each case
    assert all(0.5 < float(r["seg_dice"]) < 1 and int(r["seg_classes"]) >= 1 for r in rows.values())
    assert summary["segment"]["region"] == "HN" and SKULL in summary["segment"]["classes"]
    first = sorted(rows)[0]
    sitk.WriteImage(threshold_labeller(sitk.ReadImage(str(pred / first / "sct.nii.gz"))),
                    str(ref / first / "segmentation.nii.gz"))  # the reference = the sCT's own labels: perfect
    calls.clear()
    evaluate(pred, ref, tmp_path / "eval2", segment="HN", progress=False, report=False)
    with open(tmp_path / "eval2" / "metrics.csv") as fh:
        again = {r["case"]: r for r in csv.DictReader(fh)}
    assert len(calls) == 3 and float(again[first]["seg_dice"]) == 1.0
