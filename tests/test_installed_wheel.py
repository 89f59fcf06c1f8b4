"""The user's golden path from the built wheel, installed non-editable into a fresh venv and run outside the checkout.

This is what a researcher does: ``pip install medtrans-*.whl``, then the README's command sequence on their own data
(here a DICOM phantom cohort): phantom -> prepare -> train (a named config) -> convert --format dicom -> evaluate,
and the demo. Nothing of the checkout is importable from the working folder.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ["prepare.slice_size=[128,128]", "model.channels=[8,16,32]", "model.strides=[2,2]", "model.num_res_units=1",
        "model.head_features=8", "model.disc_channels=8", "train.batch_size=4", "train.crop_size=64",
        "train.val_every=5"]


def run(*args: str, cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    r = subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert r.returncode == 0, f"{' '.join(args)}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def source_copy(dest: Path) -> Path:
    """The project's files without build outputs, venvs or caches (a wheel is built from a clean tree)."""
    ignore = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
                                    ".ruff_cache", "medtrans_demo", ".whl", ".gpu_carry")
    shutil.copytree(ROOT, dest, ignore=ignore)
    return dest


@pytest.mark.slow
def test_wheel_golden_path_outside_the_checkout(tmp_path):
    src = source_copy(tmp_path / "src")
    run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(tmp_path / "dist"), str(src),
        cwd=tmp_path)
    wheel = next((tmp_path / "dist").glob("medtrans-*.whl"))
    run(sys.executable, "-m", "venv", str(tmp_path / "venv"), cwd=tmp_path)
    pip = [str(tmp_path / "venv" / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    run(*pip, "torch==2.13.0", cwd=tmp_path)  # the pinned CPU build (see the Makefile)
    run(*pip, str(wheel), cwd=tmp_path)
    py, mt = str(tmp_path / "venv" / "bin" / "python"), str(tmp_path / "venv" / "bin" / "medtrans")
    work = tmp_path / "work"
    work.mkdir()
    probe = run(py, "-c", "import importlib.util as u, medtrans, medtrans.config as c; "
                "print(u.find_spec('data_prep'), u.find_spec('evaluation'), medtrans.__file__, c.named_configs(), "
                "(c.CONFIG_DIR.parent / 'py.typed').is_file())", cwd=work).stdout
    assert probe.startswith("None None ") and "site-packages" in probe and "'pix2pix'" in probe, probe
    assert probe.strip().endswith("True"), probe
    sets = [a for t in TINY for a in ("--set", t)]
    run(mt, "phantom", "--out", "cohort", "--cases", "4", "--format", "dicom", cwd=work)
    run(mt, "prepare", "--input", "cohort", "--out", "prep", *sets, cwd=work)
    run(mt, "train", "--data", "prep", "--out", "run", "--config", "pix2pix", *sets, "--max-steps", "5",
        "--device", "cpu", cwd=work)
    assert "gan_weight: 1.0" in (work / "run" / "config.yaml").read_text()
    run(mt, "convert", "--model", "run", "--input", "cohort", "--out", "sct", "--format", "dicom", "--device", "cpu",
        cwd=work)
    r = run(mt, "evaluate", "--pred", "sct", "--ref", "prep", "--out", "eval", cwd=work)
    test_cases = json.loads((work / "prep" / "manifest.json").read_text())["split"]["test"]
    assert f"{len(test_cases)}/{len(test_cases)} cases (test split)" in r.stdout, r.stdout
    summary = json.loads((work / "eval" / "summary.json").read_text())
    assert summary["splits"] == ["test"] and summary["metrics"]["mae"]["n"] == len(test_cases) >= 1
    r = run(mt, "demo", "--out", "demo", "--device", "cpu", "--set", "train.max_steps=20", "--set",
            "train.val_every=20", cwd=work)
    assert "held-out test cases" in r.stdout and (work / "demo" / "eval" / "report.html").is_file()
