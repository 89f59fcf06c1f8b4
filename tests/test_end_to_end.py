"""The whole chain through the CLI on a tiny phantom cohort: phantom -> prepare -> train -> convert -> evaluate."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
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
    r = cli("evaluate", "--pred", str(tmp_path / "sct"), "--ref", str(tmp_path / "prep"), "--out", str(tmp_path / "eval"),
            "--split", "all")
    assert "3/3 cases" in r.stdout
    assert json.loads((tmp_path / "eval" / "summary.json").read_text())["n_evaluated"] == 3


@pytest.mark.slow
def test_demo_model_clearly_beats_the_lookup(tmp_path):
    """The README's first command, as committed: its trained model beats the context-free lookup on held-out cases."""
    from medtrans.demo import run_demo

    res = run_demo(tmp_path / "demo", device="cpu", progress=False)
    model, lookup = (res[k]["metrics"] for k in ("model", "baseline"))
    mean = lambda m, k: m[k]["mean"]  # noqa: E731
    assert mean(model, "mae") < 0.85 * mean(lookup, "mae"), (mean(model, "mae"), mean(lookup, "mae"))
    assert mean(model, "psnr") > mean(lookup, "psnr") + 1.0
    assert mean(model, "ssim") > mean(lookup, "ssim") and mean(model, "mae_bone") < mean(lookup, "mae_bone")
    assert (tmp_path / "demo" / "eval" / "report.html").stat().st_size > 10_000
