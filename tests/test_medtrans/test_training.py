"""Models and training: the plain head learns, resume is bit-exact, DDP keeps ranks identical."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import TINY

from medtrans.config import ModelConfig, load_config
from medtrans.errors import DatasetError, MedtransError
from medtrans.models import Generator
from medtrans.training.trainer import train

ROOT = Path(__file__).resolve().parents[2]


def test_tiny_generator_overfits_one_slice_pair():
    torch.manual_seed(0)
    cfg = ModelConfig(context_slices=1, channels=[8, 16, 32], strides=[2, 2], num_res_units=2, head_features=8)
    g = Generator(cfg)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 32), torch.linspace(-1, 1, 32), indexing="ij")
    mr = ((xx**2 + yy**2) < 0.6).float()[None, None]
    ct = torch.where((xx**2 + yy**2) < 0.6, torch.tensor(-0.45), torch.tensor(-1.0))[None, None]
    ct = ct + 0.5 * ((xx**2 + yy**2 > 0.45) & (xx**2 + yy**2 < 0.6)).float()  # a bright "skull" ring
    opt = torch.optim.Adam(g.parameters(), lr=3e-3)
    for _ in range(300):
        opt.zero_grad()
        loss = (g(mr)[:, :1] - ct).abs().mean()  # channel 0: the CT (1: its predicted error)
        loss.backward()
        opt.step()
    assert loss.item() < 0.02, loss.item()


def _final_weights(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)["generator"]



def test_crops_fall_on_the_body():
    from medtrans.training.data import BatchStream, SliceBank, body_boxes

    n, size, crop = 6, 128, 32
    masks = np.zeros((n, size, size), np.uint8)
    for i in range(n):  # a small body in a different place on each slice; slice 5 has a body wider than the crop
        r, c = 10 + 15 * i, 90 - 12 * i
        masks[i, r:r + 12, c:c + (50 if i == 5 else 10)] = 1
    masks[0] = 0  # an empty slice: crops anywhere
    mr = torch.from_numpy((2.0 * masks - 1).astype(np.float16))  # normalized MR: body 1, background -1
    bank = SliceBank(mr, mr.clone(), torch.from_numpy(masks), torch.arange(n)[:, None], torch.arange(n),
                     torch.from_numpy(body_boxes(masks)), ["x"])
    assert body_boxes(masks)[1].tolist() == [25, 36, 78, 87]
    stream = BatchStream(bank, batch_size=n, crop=crop, flip=False, seed=0, rank=0, world=1)
    origins = set()
    for step in range(30):
        _, _, mk = stream.batch(step)
        assert mk.shape == (n, 1, crop, crop)
        idx = stream._indices(step)
        body = mk[idx != 0].flatten(1).sum(1)
        assert (body > 0).all(), "a crop missed the body"
        origins.add(tuple(mk[idx == 5].flatten().tolist()))
    assert len(origins) > 3  # still random: a body wider than the crop is covered at several positions
    # bias-field augmentation: multiplicative on the MR signal (background stays at -1), a function of the step
    aug = BatchStream(bank, batch_size=n, crop=crop, flip=False, seed=0, rank=0, world=1, bias_field=0.3)
    plain_mr, _, _ = stream.batch(3)
    mr1, _, _ = aug.batch(3)
    mr2, _, _ = aug.batch(3)
    assert torch.equal(mr1, mr2)
    ratio = (mr1[plain_mr > 0] + 1) / (plain_mr[plain_mr > 0] + 1)
    assert ratio.min() > 0.2 and ratio.max() < 4.5 and (ratio - 1).abs().max() > 0.05
    assert torch.equal(mr1[plain_mr == -1], plain_mr[plain_mr == -1])


@pytest.mark.parametrize("gan", [0.0, 1.0])
def test_resume_is_bit_exact(prepared, tmp_path, gan):
    cfg = load_config(None, overrides=[*TINY, f"train.gan_weight={gan}", "train.max_steps=40"])
    train(prepared, tmp_path / "straight", cfg, stop_step=16, device="cpu", seed=3, progress=False)
    train(prepared, tmp_path / "split", cfg, stop_step=8, device="cpu", seed=3, progress=False)
    with pytest.raises(MedtransError, match="already holds a run"):
        train(prepared, tmp_path / "split", cfg, stop_step=16, device="cpu", seed=3, progress=False)
    train(prepared, tmp_path / "split", cfg, stop_step=16, resume=True, device="cpu", progress=False)
    a, b = _final_weights(tmp_path / "straight"), _final_weights(tmp_path / "split")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    first = _final_weights(tmp_path / "straight")
    assert any(not torch.equal(first[k], v) for k, v in Generator(cfg.model).state_dict().items())
    if gan == 0.0:  # identical weights give identical sCT through convert
        from medtrans.convert import convert_cohort

        outs = []
        for run in ("straight", "split"):
            convert_cohort(tmp_path / run, prepared / "phantom_000" / "mr.nii.gz", tmp_path / f"sct_{run}",
                           device="cpu", progress=False)
            outs.append((tmp_path / f"sct_{run}" / "mr" / "sct.nii.gz").read_bytes())
        a_img = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "sct_straight" / "mr" / "sct.nii.gz")))
        b_img = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "sct_split" / "mr" / "sct.nii.gz")))
        np.testing.assert_array_equal(a_img, b_img)


def test_run_folder_contents(tiny_run):
    for f in ("config.yaml", "environment.json", "metrics.jsonl", "summary.json", "bundle/bundle.json",
              "bundle/model.pt", "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (tiny_run / f).exists(), f
    logs = [json.loads(line) for line in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    assert any("val_mae" in r for r in logs) and all(r.get("slices_per_s", 1) > 0 for r in logs)


@pytest.mark.parametrize("gan", [0.0, 1.0])
def test_step_flops_are_the_trainers_own_step(gan):
    """The FLOP count comes from running TrainStep itself; scaling a one-sample count by the batch is exact."""
    from torch.utils.flop_counter import FlopCounterMode

    from medtrans.models import Discriminator
    from medtrans.training.profiling import count_step_flops
    from medtrans.training.step import TrainStep, optimizers

    cfg = load_config(None, overrides=[*TINY, f"train.gan_weight={gan}", "train.batch_size=3"])
    torch.manual_seed(0)
    g = Generator(cfg.model)
    d = Discriminator(cfg.model) if gan else None
    before = {k: v.clone() for k, v in g.state_dict().items()}
    rng = torch.get_rng_state()
    flops = count_step_flops(cfg, g, d, torch.device("cpu"), amp=False, fmt=torch.contiguous_format)
    assert all(torch.equal(before[k], v) for k, v in g.state_dict().items())  # the run's weights are untouched
    assert torch.equal(rng, torch.get_rng_state())
    opt_g, opt_d = optimizers(cfg, g, d, torch.device("cpu"))
    flat = lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda _: 1.0) if o else None  # noqa: E731
    step = TrainStep(g, d, opt_g, opt_d, flat(opt_g), flat(opt_d), cfg.train, amp=False, fmt=torch.contiguous_format)
    c = cfg.train.crop_size
    with FlopCounterMode(display=False) as counter:  # the real batch of 3, once
        step(torch.randn(3, cfg.model.context_slices, c, c), torch.randn(3, 1, c, c), torch.ones(3, 1, c, c))
    assert flops == counter.get_total_flops() > 0
    if gan:  # the adversarial step runs the discriminator three times and backpropagates through it twice
        no_gan = load_config(None, overrides=[*TINY, "train.batch_size=3"])
        assert flops > 1.5 * count_step_flops(no_gan, g, None, torch.device("cpu"), amp=False,
                                              fmt=torch.contiguous_format)


def test_train_logs_throughput_and_utilisation(prepared, tmp_path, monkeypatch):
    monkeypatch.setenv("MEDTRANS_PEAK_TFLOPS", "0.5")  # a CPU has no bf16 peak in the table: give one
    cfg = load_config(None, overrides=[*TINY, "train.max_steps=20"])
    result = train(prepared, tmp_path / "run", cfg, device="cpu", progress=False)
    t = result["throughput"]
    assert t["step_gflop"] > 0 and t["tflops_per_device"] > 0 and t["mfu"] == pytest.approx(t["tflops_per_device"] / 0.5)
    logs = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    rates = [r for r in logs if "tflops" in r]
    assert len(rates) == 2 and all(r["mfu"] == pytest.approx(r["tflops"] / 0.5) for r in rates)
    env = json.loads((tmp_path / "run" / "environment.json").read_text())
    assert env["step_gflop"] == pytest.approx(t["step_gflop"]) and env["bf16_peak_tflops"] == 0.5


def test_gpu_profile_is_chosen_on_cuda_only_without_a_config():
    from medtrans.config import choose_profile

    assert choose_profile(None, resume=False, device="auto", cuda_available=True)[0] == "gpu"
    assert choose_profile(None, resume=False, device="cuda:1", cuda_available=True)[0] == "gpu"
    assert choose_profile(None, resume=False, device="auto", cuda_available=False) == (None, None)
    assert choose_profile(None, resume=False, device="cpu", cuda_available=True) == (None, None)
    assert choose_profile("pix2pix", resume=False, device="cuda", cuda_available=True) == ("pix2pix", None)
    assert choose_profile(None, resume=True, device="cuda", cuda_available=True) == (None, None)
    gpu = load_config("gpu")
    assert gpu.train.compile and gpu.train.batch_size * gpu.train.crop_size**2 > 4 * 16 * 96**2


@pytest.mark.parametrize("gan", [0.0, 1.0])
def test_modes_beat_constant_hu(prepared, tmp_path, gan):
    """Regression and GAN modes both reach a validation MAE clearly below the best constant HU."""
    from medtrans.evaluation.baselines import constant_hu
    from medtrans.evaluation.metrics import compute_metrics

    stronger = ["model.channels=[16,32,64,128]", "model.strides=[2,2,2]", "model.num_res_units=2",
                "model.head_features=16", "train.batch_size=8", "train.crop_size=96"]
    cfg = load_config(None, overrides=[*TINY, *stronger, f"train.gan_weight={gan}", "train.val_every=400"])
    result = train(prepared, tmp_path / "run", cfg, device="cpu", progress=False)
    manifest = json.loads((prepared / "manifest.json").read_text())
    read = lambda n, f: sitk.GetArrayFromImage(sitk.ReadImage(str(prepared / n / f))).astype(np.float32)  # noqa: E731
    train_ct = [read(n, "ct_registered.nii.gz") for n in manifest["split"]["train"]]
    train_mask = [read(n, "mask.nii.gz") for n in manifest["split"]["train"]]
    const = constant_hu(train_ct, train_mask)
    val = manifest["split"]["val"]
    const_mae = np.mean([compute_metrics(read(n, "ct_registered.nii.gz"), np.full_like(read(n, "mask.nii.gz"), const),
                                         read(n, "mask.nii.gz"))["mae"] for n in val])
    assert result["best_val_mae"] < 0.8 * const_mae, (result["best_val_mae"], const_mae)


def test_ddp_two_ranks_identical(prepared, tmp_path):
    env = {**os.environ, "MEDTRANS_DDP_BACKEND": "gloo", "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533",
            str(ROOT / "tests" / "test_medtrans" / "ddp_worker.py"), str(prepared), str(tmp_path / "run"),
            json.dumps(TINY)]
    r = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    w0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    w1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k
    assert (tmp_path / "run" / "bundle" / "model.pt").exists()


def test_empty_dataset_and_missing_cuda(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="manifest.json missing"):
        train(tmp_path / "empty", tmp_path / "run", load_config(None), device="cpu", progress=False)
    if not torch.cuda.is_available():
        with pytest.raises(MedtransError, match="no CUDA device"):
            train(tmp_path / "empty", tmp_path / "run", load_config(None), device="cuda", progress=False)


def test_time_budget_fixes_the_lr_horizon_and_resume_keeps_it(prepared, tmp_path):
    """With --max-minutes the learning rate decays within the budget; the horizon is recorded and resumed."""
    cfg = load_config(None, overrides=[*TINY, "train.max_steps=1000000", "train.val_every=1000000",
                                       "train.checkpoint_every=1000000"])
    result = train(prepared, tmp_path / "run", cfg, max_minutes=0.2, device="cpu", progress=False)
    logs = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    horizon = next(r["lr_horizon"] for r in logs if "lr_horizon" in r)
    assert 20 < horizon < 1_000_000 and result["step"] <= horizon
    lrs = [r["lr"] for r in logs if "lr" in r]
    assert lrs[-1] < 0.6 * cfg.train.lr, (lrs[-1], result["step"], horizon)  # decayed within the budget
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert state["lr_horizon"] == horizon and state["lr_horizon_fixed"]
    if result["step"] < horizon:  # finish the same schedule: the rate reaches zero exactly at the horizon
        train(prepared, tmp_path / "run", cfg, stop_step=horizon, resume=True, device="cpu", progress=False)
        logs = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
        assert [r["lr"] for r in logs if "lr" in r][-1] == 0.0
    # the budgeted schedule has ended: a resume without --max-minutes used to train on at learning rate 0
    from medtrans.training.trainer import NothingToTrain

    with pytest.raises(NothingToTrain, match=f"budgeted schedule ended at step {horizon}"):
        train(prepared, tmp_path / "run", cfg, stop_step=horizon + 5, resume=True, device="cpu", progress=False)
