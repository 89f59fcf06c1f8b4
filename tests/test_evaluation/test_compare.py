"""evaluate with several --pred: methods side by side on the same cases, paired tests, one montage."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys

import SimpleITK as sitk

from medtrans.config import load_config
from medtrans.convert import convert_cohort
from medtrans.evaluation.baselines import fit_baselines, lookup_sct
from medtrans.intensity import MRNormalization
from medtrans.io import write_volume


def test_two_methods_compared_on_common_cases(tiny_run, prepared, tmp_path):
    manifest = json.loads((prepared / "manifest.json").read_text())
    convert_cohort(tiny_run, prepared, tmp_path / "model", device="cpu", progress=False)
    spec = MRNormalization.from_prepare(load_config(None, base=manifest["config"]).prepare)
    lookup, _ = fit_baselines(prepared, manifest["split"]["train"], spec)
    cases = sorted(r["case"] for r in manifest["cases"])
    for name in cases[:-1]:  # the lookup misses one case: only common cases are compared
        write_volume(lookup_sct(lookup, sitk.ReadImage(str(prepared / name / "mr.nii.gz")), spec),
                     tmp_path / "lookup" / name / "sct.nii.gz")
    r = subprocess.run([sys.executable, "-m", "medtrans", "evaluate", "--pred", f"model={tmp_path / 'model'}",
                        "--pred", f"lookup={tmp_path / 'lookup'}", "--ref", str(prepared), "--split", "all",
                        "--out", str(tmp_path / "cmp")], capture_output=True, text=True, timeout=600)
    assert r.returncode == 1, r.stderr  # the lookup's missing case is reported, with its reason
    assert f"not evaluated (lookup): {cases[-1]}:" in r.stderr and "no sCT in" in r.stderr, r.stderr
    assert "lookup - model: MAE" in r.stdout and "Wilcoxon p" in r.stdout, r.stdout
    comparison = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert comparison["methods"] == ["model", "lookup"] and comparison["n_common"] == len(cases) - 1
    test = comparison["paired"]["lookup - model"]["mae"]
    assert test["n"] == len(cases) - 1 and test["ci95"][0] <= test["mean_diff"] <= test["ci95"][1]
    assert 0 <= test["p_wilcoxon"] <= 1
    with open(tmp_path / "cmp" / "comparison.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 * (len(cases) - 1) and {r["method"] for r in rows} == {"model", "lookup"}
    for name in ("model", "lookup"):  # each method also gets its own evaluation
        assert (tmp_path / "cmp" / name / "metrics.csv").is_file()
    html = (tmp_path / "cmp" / "report.html").read_text()
    assert "id='paired'" in html and len(re.findall(r"alt='montage ", html)) >= 1


def test_method_names_that_would_share_a_folder_and_missing_folders_are_refused_first(tmp_path):
    import pytest

    from medtrans.errors import MedtransError
    from medtrans.evaluation.compare import compare, parse_preds

    with pytest.raises(MedtransError, match="would share the report folder 'a_b'"):
        parse_preds(["a b=x", "a_b=y"])  # used to overwrite one another's report folder
    (tmp_path / "run=1").mkdir()
    assert parse_preds([str(tmp_path / "run=1")]) == {"run=1": tmp_path / "run=1"}  # a folder, not NAME=DIR
    (tmp_path / "a").mkdir()
    with pytest.raises(MedtransError, match="no such folder: b="):
        compare({"a": tmp_path / "a", "b": tmp_path / "nope"}, tmp_path, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # found before anything is written
