"""What happens when things go wrong (docs/failures.md): each bad input gets one line naming the file and the
problem, the rest of a batch completes, inputs stay byte-identical, and outputs are complete and current or absent.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import TINY, rewrite_bundle_weights

from medtrans.config import load_config, resolve_config_path
from medtrans.convert import convert_cohort
from medtrans.errors import ConfigError, InputError, OutputError
from medtrans.evaluation.metrics import TISSUES, compute_metrics
from medtrans.fsutil import write_json
from medtrans.io import read_volume, write_volume
from medtrans.phantom import make_cohort

TINY_SETS = [a for t in TINY for a in ("--set", t)]


def cli(*args: str, cwd: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medtrans", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=cwd)


def assert_one_line_error(r: subprocess.CompletedProcess, *needles: str, code: int = 2) -> None:
    """Exit ``code``, a single stderr line starting ``medtrans: error:`` that holds every needle, no traceback."""
    assert r.returncode == code, (r.returncode, r.stdout[-1500:], r.stderr[-1500:])
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("medtrans: error:"), r.stderr[-1500:]
    for n in needles:
        assert n in lines[0], (n, lines[0])
    assert "Traceback" not in r.stderr and "weights_only=False" not in r.stderr


def snapshot(folder: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@contextlib.contextmanager
def small_mount(path: Path, *, size: str = "64k", read_only: bool = False):
    """A tiny tmpfs (a full disk) or a read-only one; skips where mounting is not permitted (not root)."""
    path.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}" + (",ro" if read_only else "")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here to simulate a full or read-only disk: {r.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def mr_cohort(prepared: Path, folder: Path, names: tuple[str, ...] = ("a", "b", "c")) -> Path:
    for i, name in enumerate(names):
        (folder / name).mkdir(parents=True)
        shutil.copy(prepared / f"phantom_00{i}" / "mr.nii.gz", folder / name / "mr.nii.gz")
    return folder


# ------------------------------------------------------------------------------------------------ configs


def test_named_config_is_not_shadowed_by_a_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("demo", "pix2pix"):
        (tmp_path / name).mkdir()  # what `medtrans demo --out demo` creates before it loads its config
        assert resolve_config_path(name).parent.name == "configs"
    assert load_config("pix2pix").train.gan_weight > 0
    with pytest.raises(ConfigError, match="is a folder"):
        load_config("./demo")
    with pytest.raises(ConfigError, match="named configs are 2d, 3d, default, demo, gpu, multiplanar, pix2pix"):
        load_config("nosuch")


@pytest.mark.parametrize("override,needle", [
    ("train.batch_size=-4", "train.batch_size is -4"),
    ("train.max_steps=0", "train.max_steps is 0"),
    ("prepare.mr_percentile=150", "prepare.mr_percentile is 150.0"),
    ("train.lr=.nan", "must be a finite number"),
    ("model.channels=[0,16]", "model.channels"),
])
def test_invalid_config_values_fail_up_front(override, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.").replace("[", r"\[")):
        load_config(None, overrides=[override])


def test_cli_refuses_bad_numbers_before_any_work(prepared, tmp_path):
    assert_one_line_error(cli("prepare", "--input", str(prepared), "--out", str(tmp_path / "p"), "--set",
                              "prepare.mr_percentile=150"), "prepare.mr_percentile is 150.0")
    r = cli("train", "--data", str(prepared), "--out", str(tmp_path / "r"), "--max-steps", "0")
    assert r.returncode == 2 and "Traceback" not in r.stderr and "--max-steps" in r.stderr
    assert not (tmp_path / "p").exists() and not (tmp_path / "r").exists()


# ------------------------------------------------------------------------------------------------ training


def test_resume_refuses_changed_config_and_summary_is_strict_json(prepared, tmp_path):
    run = tmp_path / "run"
    sets = [a for t in [*TINY, "train.max_steps=40", "train.val_every=3"] for a in ("--set", t)]
    r = cli("train", "--data", str(prepared), "--out", str(run), "--device", "cpu", "--max-steps", "3", *sets)
    assert r.returncode == 0, r.stderr[-2000:]
    r = cli("train", "--data", str(prepared), "--out", str(run), "--device", "cpu", "--resume", "--max-steps", "4",
            "--set", "train.lr=0.01", "--set", "model.num_res_units=2")
    assert_one_line_error(r, "train.lr", "model.num_res_units", "differ")
    # bookkeeping keys may change on resume; the rest of the saved config stays in force
    r = cli("train", "--data", str(prepared), "--out", str(run), "--device", "cpu", "--resume", "--max-steps", "4",
            "--set", "train.val_every=100")
    assert r.returncode == 0, r.stderr[-2000:]
    text = (run / "summary.json").read_text()
    summary = json.loads(text, parse_constant=lambda c: pytest.fail(f"summary.json holds {c}"))
    assert summary["step"] == 4
    r = cli("train", "--data", str(prepared), "--out", str(run), "--device", "cpu", "--resume", "--max-steps", "2")
    assert_one_line_error(r, "already at step 4")


class NotAWeight:
    """A class torch.load(weights_only=True) must refuse: a stand-in for a malicious pickle."""


def test_bad_checkpoints_and_bundles_are_refused_in_one_line(tiny_run, prepared, tmp_path):
    bad_run = tmp_path / "bad_run"
    shutil.copytree(tiny_run, bad_run)
    torch.save({"step": 1, "payload": NotAWeight()}, bad_run / "checkpoints" / "last.pt")
    assert_one_line_error(cli("train", "--data", str(prepared), "--out", str(bad_run), "--resume"),
                          "last.pt", "refused")
    (bad_run / "bundle" / "model.pt").write_bytes(np.random.default_rng(0).bytes(4096))
    mr = prepared / "phantom_000" / "mr.nii.gz"
    assert_one_line_error(cli("convert", "--model", str(bad_run), "--input", str(mr), "--out", str(tmp_path / "o1")),
                          "model.pt", "damaged or not a PyTorch weights file")
    mismatch = tmp_path / "mismatch"
    shutil.copytree(tiny_run / "bundle", mismatch)
    meta = json.loads((mismatch / "bundle.json").read_text())
    meta["model"]["channels"] = [16, 32, 64]
    write_json(mismatch / "bundle.json", meta)
    assert_one_line_error(cli("convert", "--model", str(mismatch), "--input", str(mr), "--out", str(tmp_path / "o2")),
                          "do not match the architecture")


# ------------------------------------------------------------------------------------------------ convert reruns


def test_convert_reruns_are_decided_by_provenance(tiny_run, prepared, tmp_path):
    cohort = mr_cohort(prepared, tmp_path / "in", ("a",))
    out = tmp_path / "out"
    run = lambda **kw: convert_cohort(kw.pop("model", tiny_run), cohort, out, device="cpu", progress=False, **kw)[0]  # noqa: E731
    assert run()["reason"] == "new"
    assert run()["status"] == "skipped"
    shutil.copy(prepared / "phantom_001" / "mr.nii.gz", cohort / "a" / "mr.nii.gz")  # another patient, same name
    r = run()
    assert r["status"] == "ok" and r["reason"] == "the input MR changed"
    r = run(fmt="mha")
    assert r["reason"] == "option format changed (nifti -> mha)"
    assert not (out / "a" / "sct.nii.gz").exists() and (out / "a" / "sct.mha").exists()  # no stale sibling
    assert run(fmt="mha", tta=True)["reason"] == "option tta_flip changed (False -> True)"
    retrained = tmp_path / "retrained"
    shutil.copytree(tiny_run / "bundle", retrained)
    state = torch.load(retrained / "model.pt", weights_only=True)
    key = next(k for k, v in state.items() if v.is_floating_point())
    state[key] = state[key] + 0.01
    rewrite_bundle_weights(retrained, state)
    assert run(model=retrained, fmt="mha", tta=True)["reason"] == "the model changed"
    record = json.loads((out / "a" / "sct.json").read_text())
    assert record["provenance"]["settings"] == {"series_uid": None, "format": "mha", "tta_flip": True,
                                                "uncertainty": False, "strict": False}
    # a failure removes the old output: a stale sCT is never left beside a new input
    (cohort / "a" / "mr.nii.gz").write_bytes(b"\x1f\x8b not gzip")
    assert run(model=retrained, fmt="mha", tta=True)["status"] == "failed"
    assert not (out / "a" / "sct.mha").exists() and not (out / "a" / "sct.json").exists()


def test_blank_mr_fails_at_convert_and_prepare_names_the_role(tiny_run, prepared, aligned_cohort, tmp_path):
    cohort = mr_cohort(prepared, tmp_path / "in", ("a", "blank"))
    blank = sitk.ReadImage(str(cohort / "blank" / "mr.nii.gz")) * 0
    sitk.WriteImage(blank, str(cohort / "blank" / "mr.nii.gz"))
    res = {r["case"]: r for r in convert_cohort(tiny_run, cohort, tmp_path / "out", device="cpu", progress=False)}
    assert res["a"]["status"] == "ok"
    assert res["blank"]["status"] == "failed" and "the MR image is blank" in res["blank"]["error"]
    assert "blank/mr.nii.gz" in res["blank"]["error"]
    pairs = tmp_path / "pairs"
    shutil.copytree(aligned_cohort / "phantom_000", pairs / "blank_ct")
    ct = sitk.ReadImage(str(pairs / "blank_ct" / "ct.nii.gz"))
    sitk.WriteImage(ct * 0 - 1024, str(pairs / "blank_ct" / "ct.nii.gz"))
    r = cli("prepare", "--input", str(pairs), "--out", str(tmp_path / "prep"), *TINY_SETS)
    assert r.returncode == 1 and "the CT image is blank: every voxel is -1024" in r.stdout


# ------------------------------------------------------------------------------------------------ output folders


@pytest.mark.parametrize("command", ["prepare", "train", "convert", "evaluate"])
def test_out_that_is_a_file_or_foreign_folder_is_refused(command, tiny_run, prepared, tmp_path):
    args = {"prepare": ["--input", str(prepared / "phantom_000")],
            "train": ["--data", str(prepared)],
            "convert": ["--model", str(tiny_run), "--input", str(prepared / "phantom_000" / "mr.nii.gz")],
            "evaluate": ["--pred", str(tiny_run), "--ref", str(prepared)]}[command]
    before = snapshot(prepared)
    afile = tmp_path / "afile"
    afile.write_text("mine")
    assert_one_line_error(cli(command, *args, "--out", str(afile)), "afile", "is a file")
    foreign = tmp_path / "thesis"
    foreign.mkdir()
    (foreign / "chapter1.tex").write_text("mine")
    hint = ("--allow-nonempty-out",) if command != "train" else ()  # train has no such option: never suggested
    assert_one_line_error(cli(command, *args, "--out", str(foreign)), "thesis", "not empty", *hint)
    assert afile.read_text() == "mine" and sorted(p.name for p in foreign.iterdir()) == ["chapter1.tex"]
    assert snapshot(prepared) == before


def test_convert_out_overlapping_the_input_is_refused(tiny_run, prepared, tmp_path):
    cohort = mr_cohort(prepared, tmp_path / "in", ("a",))
    before = snapshot(cohort)
    assert_one_line_error(cli("convert", "--model", str(tiny_run), "--input", str(cohort), "--out", str(cohort)),
                          "overlaps the input")
    assert_one_line_error(cli("convert", "--model", str(tiny_run), "--input", str(cohort / "a" / "mr.nii.gz"),
                              "--out", str(cohort / "a")), "overlaps the input")
    assert snapshot(cohort) == before
    r = cli("convert", "--model", str(tiny_run), "--input", str(cohort), "--out", str(tmp_path / "other"),
            "--allow-nonempty-out", "--device", "cpu")
    assert r.returncode == 0, r.stderr


def test_read_only_out_is_one_line(prepared, tmp_path):
    with small_mount(tmp_path / "ro", read_only=True) as ro:
        r = cli("prepare", "--input", str(prepared / "phantom_000"), "--out", str(ro / "prep"))
        assert_one_line_error(r, "prep", "Read-only file system")


def test_full_disk_leaves_nothing_under_a_final_name(tiny_run, prepared, tmp_path):
    img = sitk.ReadImage(str(prepared / "phantom_000" / "mr.nii.gz"))
    with small_mount(tmp_path / "full", size="48k") as full:
        for name in ("v.nii.gz", "v.mha"):
            with pytest.raises(OutputError, match=name.replace(".", r"\.")):
                write_volume(img, full / name)
            assert not (full / name).exists()
        cohort = mr_cohort(prepared, tmp_path / "in", ("a",))
        res = convert_cohort(tiny_run, cohort, full / "sct", device="cpu", progress=False)[0]
        assert res["status"] == "failed" and "sct.nii.gz" in res["error"], res
        assert not (full / "sct" / "a" / "sct.nii.gz").exists() and not (full / "sct" / "a" / "sct.json").exists()
        assert [p.name for p in (full / "sct" / "a").iterdir()] == []  # no temp files either


# ------------------------------------------------------------------------------------------------ bad inputs


def test_non_3d_scalar_images_are_named(tmp_path):
    sitk.WriteImage(sitk.Image([8, 9], sitk.sitkInt16), str(tmp_path / "slice.nii.gz"))
    sitk.WriteImage(sitk.Image([8, 9, 4, 3], sitk.sitkInt16), str(tmp_path / "fmri.nii.gz"))
    sitk.WriteImage(sitk.Image([8, 9, 4], sitk.sitkVectorUInt8, 3), str(tmp_path / "rgb.nii.gz"))
    for name, needle in (("slice", "got a 2D image of size 8x9"), ("fmri", "got a 4D image of size 8x9x4x3"),
                         ("rgb", "got a 3-component (vector/RGB) image")):
        with pytest.raises(InputError, match=needle.replace("(", r"\(").replace(")", r"\)")):
            read_volume(tmp_path / f"{name}.nii.gz")
    assert_one_line_error(cli("info", str(tmp_path / "fmri.nii.gz")), "fmri.nii.gz", "expects a 3D scalar volume")


def test_tiny_and_ambiguous_cases_fail_alone(aligned_cohort, tmp_path):
    cohort = tmp_path / "cohort"
    shutil.copytree(aligned_cohort / "phantom_000", cohort / "good")
    (cohort / "tiny").mkdir()
    small = sitk.Image([4, 4, 2], sitk.sitkInt16) + 100
    small[1, 1, 1] = 500
    sitk.WriteImage(small, str(cohort / "tiny" / "mr.nii.gz"))
    sitk.WriteImage(small * 2, str(cohort / "tiny" / "ct.nii.gz"))
    shutil.copytree(aligned_cohort / "phantom_001", cohort / "two_mr")
    sitk.WriteImage(sitk.ReadImage(str(cohort / "two_mr" / "mr.nii.gz")), str(cohort / "two_mr" / "mr.mha"))
    before = snapshot(cohort)
    r = cli("prepare", "--input", str(cohort), "--out", str(tmp_path / "prep"), *TINY_SETS)
    assert r.returncode == 1, r.stderr[-2000:]
    rows = {ln.split()[0]: ln for ln in r.stdout.splitlines() if ln.strip()}
    assert " ok " in rows["good"]
    assert "too small to register: 4x4x2 voxels" in rows["tiny"] and "tiny/mr.nii.gz" in rows["tiny"]
    assert "holds 2 'mr' images (mr.nii.gz, mr.mha)" in rows["two_mr"]
    assert snapshot(cohort) == before


def test_truncated_dicom_pixel_data_is_refused(tiny_run, tmp_path):
    cohort = tmp_path / "dicom"
    make_cohort(cohort, cases=2, seed=4, aligned=False, fmt="dicom")
    victim = sorted((cohort / "phantom_001" / "mr").iterdir())[7]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) - len(data) // 3])
    with pytest.raises(InputError, match="PixelData is cut short") as err:
        read_volume(cohort / "phantom_001" / "mr")
    assert victim.name in str(err.value)
    before = snapshot(cohort)
    res = {r["case"]: r for r in convert_cohort(tiny_run, cohort, tmp_path / "out", device="cpu", progress=False)}
    assert res["phantom_000"]["status"] == "ok"
    assert res["phantom_001"]["status"] == "failed" and "cut short" in res["phantom_001"]["error"]
    assert snapshot(cohort) == before
    assert_one_line_error(cli("info", str(cohort / "phantom_001" / "mr")), victim.name, "cut short")


# ------------------------------------------------------------------------------------------------ evaluate


def test_evaluate_reads_dicom_scores_the_test_split_and_exits_1_on_problems(tiny_run, prepared, tmp_path):
    manifest = json.loads((prepared / "manifest.json").read_text())
    r = cli("convert", "--model", str(tiny_run), "--input", str(prepared), "--out", str(tmp_path / "sct"),
            "--format", "dicom", "--device", "cpu")
    assert r.returncode == 0, r.stderr[-2000:]
    r = cli("evaluate", "--pred", str(tmp_path / "sct"), "--ref", str(prepared), "--out", str(tmp_path / "eval"))
    n_test = len(manifest["split"]["test"])
    assert r.returncode == 0 and f"{n_test}/{n_test} cases (test split)" in r.stdout, r.stdout + r.stderr
    rows = (tmp_path / "eval" / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("case,split,flags,mae") and all(",test," in row for row in rows[1:]) and len(rows) == 1 + n_test
    r = cli("evaluate", "--pred", str(tmp_path / "sct"), "--ref", str(prepared), "--out", str(tmp_path / "all"),
            "--split", "all")
    assert r.returncode == 0 and "4/4 cases (test/train/val split)" in r.stdout, r.stdout
    shutil.rmtree(tmp_path / "sct" / manifest["split"]["train"][0])
    r = cli("evaluate", "--pred", str(tmp_path / "sct"), "--ref", str(prepared), "--out", str(tmp_path / "all"),
            "--split", "all")
    assert r.returncode == 1 and "3/4 cases" in r.stdout and "no sCT in" in r.stderr


def test_tissue_bands_partition_the_mask():
    rng = np.random.default_rng(0)
    gt = rng.choice([-1000, -200, -199, 0, 299, 300, 301, 1500], size=(12, 14, 16)).astype(np.float64)
    pred = gt + rng.normal(0, 40, gt.shape)
    mask = np.ones(gt.shape, bool)
    m = compute_metrics(gt, pred, mask)
    counts = {name: int(((gt >= lo) & (gt < hi)).sum()) for name, (lo, hi) in TISSUES.items()}
    assert sum(counts.values()) == gt.size
    weighted = sum(counts[n] * m[f"mae_{n}"] for n in TISSUES) / gt.size
    assert weighted == pytest.approx(m["mae"], rel=1e-12)


# ------------------------------------------------------------------------------------------------ workers


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                kids.append(int(stat.parent.name))
    return kids


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to find the worker processes")
def test_killing_prepare_stops_its_workers(aligned_cohort, tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "medtrans", "prepare", "--input", str(aligned_cohort), "--out",
                             str(tmp_path / "prep"), "--workers", "2", "--set", "prepare.registration_iterations=400"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    workers: list[int] = []
    while time.time() < deadline and len(workers) < 2:
        time.sleep(0.5)
        # the spawn pool starts a resource tracker too; workers are the children running the pool's main
        workers = [p for p in _children(proc.pid)
                   if "spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes().decode(errors="replace")]
    assert len(workers) == 2, "prepare --workers 2 did not start two workers"
    time.sleep(2)  # let them get into a case
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 15
    while time.time() < deadline and any(Path(f"/proc/{p}").exists() for p in workers):
        time.sleep(0.2)
    alive = [p for p in workers if Path(f"/proc/{p}").exists()
             and "Z" not in Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0]]
    assert not alive, f"workers {alive} outlived their killed parent"
    files = snapshot(tmp_path / "prep")
    time.sleep(2)
    assert snapshot(tmp_path / "prep") == files, "something went on writing into PREP"
