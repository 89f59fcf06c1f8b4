"""The whole chain through the CLI on a tiny phantom cohort: phantom -> prepare -> train -> convert -> evaluate."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import TINY


def cli(*args: str) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "medtrans", *args], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    return r


def test_pipeline_end_to_end(tmp_path):
    sets = [a for t in [*TINY, "train.max_steps=30", "train.val_every=30"] for a in ("--set", t)]
    cli("phantom", "--out", str(tmp_path / "cohort"), "--cases", "3", "--seed", "9")
    cli("prepare", "--input", str(tmp_path / "cohort"), "--out", str(tmp_path / "prep"), *sets)
    cli("train", "--data", str(tmp_path / "prep"), "--out", str(tmp_path / "run"), "--device", "cpu", *sets)
    assert "train:" in (tmp_path / "run" / "config.yaml").read_text()
    cli("convert", "--model", str(tmp_path / "run"), "--input", str(tmp_path / "prep"), "--out", str(tmp_path / "sct"),
        "--device", "cpu")
    r = cli("evaluate", "--pred", str(tmp_path / "sct"), "--ref", str(tmp_path / "prep"), "--out", str(tmp_path / "eval"))
    assert "3/3 cases" in r.stdout
    assert json.loads((tmp_path / "eval" / "summary.json").read_text())["n_evaluated"] == 3
