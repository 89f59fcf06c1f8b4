"""Issue #15 modes: 3D patch models (sliding-window inference), tri-planar slice models and ensembles."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import TINY

from medtrans.config import load_config
from medtrans.convert import convert_cohort
from medtrans.errors import ConfigError
from medtrans.inference import Predictor
from medtrans.intensity import MRNormalization
from medtrans.modes import PLANE_AXES, check_mode
from medtrans.training.data import BatchStream, SliceBank, body_boxes
from medtrans.training.trainer import train

TINY_3D = [*TINY, "model.spatial_dims=3", "model.context_slices=1", "model.patch_depth=16", "train.crop_size=32",
           "train.batch_size=2", "model.channels=[4,8,16]", "model.head_features=4", "model.disc_channels=4"]


def coordinate_bank(k: int) -> tuple[SliceBank, tuple[int, int, int]]:
    """One 'case' whose MR holds each voxel's column, CT its slice and mask its row (all exactly representable)."""
    z, h, w = 40, 48, 48
    zz, yy, xx = np.meshgrid(np.arange(z), np.arange(h), np.arange(w), indexing="ij")
    keep = np.arange(z)
    nb = np.clip(keep[:, None] + np.arange(-(k // 2), k // 2 + 1)[None], 0, z - 1)
    masks = np.ones((z, h, w), np.uint8)
    bank = SliceBank(torch.from_numpy(xx.astype(np.float16)), torch.from_numpy(zz.astype(np.float16)),
                     torch.from_numpy(yy.astype(np.uint8)), torch.from_numpy(nb), torch.from_numpy(keep),
                     torch.from_numpy(body_boxes(masks)), ["c"], torch.tensor([[0, z]] * z),
                     torch.zeros(z))
    return bank, (z, h, w)


@pytest.mark.parametrize("plane", ["coronal", "sagittal"])
def test_plane_samples_are_what_inference_feeds(plane):
    """A training sample of a plane is laid out exactly as the inference permutation (PLANE_AXES) lays out
    that plane's slices: image axes, neighbour axis, and a left-right flip as the mirror image of the volume."""
    bank, (z, _, _) = coordinate_bank(3)
    stream = BatchStream(bank, batch_size=8, crop=16, flip=True, seed=1, rank=0, world=1, plane=plane)
    mr, ct, mk = stream.batch(0)
    assert mr.shape == (8, 3, 16, 16) and ct.shape == mk.shape == (8, 1, 16, 16)
    vol_x = bank.mr.float().numpy()
    perm = np.transpose(vol_x, PLANE_AXES[plane])  # (slices of the plane, image rows, image cols)
    for i in range(8):
        zs = ct[i, 0, :, 0].numpy()  # image rows run along z in both planes
        assert np.array_equal(zs, zs[0] + np.arange(16))
        if plane == "coronal":  # channels are neighbouring rows (y), columns are x (reversed when flipped)
            ys = [int(mk[i, 0, 0, 0])] * 3
            cols = mr[i, 1, 0].numpy()
            assert np.all(np.abs(np.diff(cols)) == 1)
            assert int(mk[i, 0].min()) == int(mk[i, 0].max()) == ys[0]
        else:  # channels are neighbouring columns (x): reversed order when mirrored; image columns are y
            chans = mr[i, :, 0, 0].numpy()
            assert np.all(np.abs(np.diff(chans)) == 1) or len(set(chans)) < 3  # clamped at the volume's edge
            assert np.array_equal(mk[i, 0, 0].numpy(), mk[i, 0, 0, 0].numpy() + np.arange(16))
        assert perm.shape[1] == z
    flipped = [i for i in range(8) if (mr[i, 1, 0, 1] < mr[i, 1, 0, 0] if plane == "coronal"
                                      else mr[i, 2, 0, 0] < mr[i, 0, 0, 0])]
    assert 0 < len(flipped) < 8  # some samples mirrored, some not


def test_an_all_planes_model_cycles_the_planes():
    bank, _ = coordinate_bank(3)
    stream = BatchStream(bank, batch_size=4, crop=16, flip=False, seed=0, rank=0, world=1, plane="all")
    for step, plane in zip(range(6), ["axial", "coronal", "sagittal"] * 2, strict=True):
        mine = BatchStream(bank, batch_size=4, crop=16, flip=False, seed=0, rank=0, world=1, plane=plane)
        assert all(torch.equal(a, b) for a, b in zip(stream.batch(step), mine.batch(step), strict=True)), step
    assert load_config("multiplanar").model.plane == "all"


def test_3d_patches_are_contiguous_volumes():
    bank, _ = coordinate_bank(1)
    stream = BatchStream(bank, batch_size=4, crop=16, flip=False, seed=0, rank=0, world=1, depth=8)
    mr, ct, mk = stream.batch(3)
    assert mr.shape == ct.shape == mk.shape == (4, 1, 8, 16, 16)
    for i in range(4):
        assert np.array_equal(ct[i, 0, :, 0, 0].numpy(), ct[i, 0, 0, 0, 0].numpy() + np.arange(8))  # z
        assert np.array_equal(mk[i, 0, 0, :, 0].numpy(), mk[i, 0, 0, 0, 0].numpy() + np.arange(16))  # y
        assert np.array_equal(mr[i, 0, 0, 0].numpy(), mr[i, 0, 0, 0, 0].numpy() + np.arange(16))  # x
    deep = BatchStream(bank, batch_size=2, crop=16, flip=False, seed=0, rank=0, world=1, depth=48)  # case: 40
    mr, ct, mk = deep.batch(0)
    slices = ct[:, 0, :, 0, 0]
    for i in range(2):  # the whole case, in order, padded along z with air, MR background and no body
        body = mk[i, 0].amax(dim=(1, 2)) > 0
        assert int(body.sum()) <= 40 and torch.equal(slices[i][body], torch.arange(40.0)[: int(body.sum())] +
                                                     slices[i][body][0])


def test_plane_inference_permutes_back():
    """An identity 'network' returning its centre channel gives back the input in every plane (and with TTA)."""
    class CentreChannel(torch.nn.Module):
        def forward(self, x):
            return x[:, x.shape[1] // 2: x.shape[1] // 2 + 1]

    vol = np.random.default_rng(0).normal(size=(10, 12, 14)).astype(np.float32)
    for plane in (*PLANE_AXES, "all"):
        p = Predictor(CentreChannel(), MRNormalization(), 3, 4, torch.device("cpu"), plane=plane, tta_flip=True)
        np.testing.assert_allclose(p.predict_normalized(vol, -1.0), vol, rtol=1e-6, atol=1e-6)


def test_sliding_windows_cover_the_volume_exactly():
    class Identity(torch.nn.Module):
        def forward(self, x):
            return x

    vol = np.random.default_rng(1).normal(size=(11, 30, 17)).astype(np.float32)  # smaller than a window along x
    p = Predictor(Identity(), MRNormalization(), 1, 4, torch.device("cpu"), window=(8, 16, 24), overlap=0.5)
    np.testing.assert_allclose(p.predict_normalized(vol, -1.0), vol, atol=1e-5)


def test_3d_config_checks():
    """The 3D mode owns its checks (run by train and convert before any work, and by the CLI)."""
    with pytest.raises(ConfigError, match="3D model.*context_slices=1"):
        check_mode(load_config(None, overrides=["model.spatial_dims=3"]))
    with pytest.raises(ConfigError, match="patch_depth must be divisible"):
        check_mode(load_config("3d", overrides=["model.patch_depth=30"]))
    assert check_mode(load_config("3d")).name == "3d"
    with pytest.raises(ConfigError, match="selects no mode"):
        check_mode(load_config(None, overrides=["model.plane=diagonal"]))


def _weights(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.pt", weights_only=True)["generator"]


def oblique(mr: sitk.Image) -> sitk.Image:
    """The MR on an oblique, anisotropic grid."""
    t = sitk.Euler3DTransform((0, 0, 0), 0.12, -0.08, 0.15)
    d = np.array(t.GetMatrix()).reshape(3, 3)
    ref = sitk.Image([70, 64, 26], sitk.sitkInt16)
    ref.SetSpacing((1.7, 1.9, 3.3))
    ref.SetDirection(d.ravel().tolist())
    centre = np.array(mr.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in mr.GetSize()]))
    ref.SetOrigin((centre - d @ (np.array([69, 63, 25]) * np.array([1.7, 1.9, 3.3]) / 2)).tolist())
    return sitk.Resample(mr, ref, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkInt16)


def test_3d_mode_trains_resumes_bit_exactly_and_converts_on_the_input_grid(prepared, tmp_path):
    cfg = load_config(None, overrides=[*TINY_3D, "train.max_steps=20"])
    train(prepared, tmp_path / "straight", cfg, stop_step=6, device="cpu", seed=2, progress=False)
    train(prepared, tmp_path / "split", cfg, stop_step=3, device="cpu", seed=2, progress=False)
    train(prepared, tmp_path / "split", cfg, stop_step=6, resume=True, device="cpu", progress=False)
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "split")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert a["unet.model.0.conv.unit0.conv.weight"].dim() == 5  # a 3D network
    mr = oblique(sitk.ReadImage(str(prepared / "phantom_000" / "mr.nii.gz")))
    (tmp_path / "in" / "case").mkdir(parents=True)
    sitk.WriteImage(mr, str(tmp_path / "in" / "case" / "mr.mha"))  # MetaImage stores the grid exactly
    res = convert_cohort(tmp_path / "straight", tmp_path / "in", tmp_path / "out", fmt="mha", device="cpu",
                         progress=False)
    assert res[0]["status"] == "ok", res
    sct = sitk.ReadImage(str(tmp_path / "out" / "case" / "sct.mha"))
    source = sitk.ReadImage(str(tmp_path / "in" / "case" / "mr.mha"))
    assert sct.GetSize() == source.GetSize() and sct.GetSpacing() == source.GetSpacing()
    assert sct.GetOrigin() == source.GetOrigin() and sct.GetDirection() == source.GetDirection()
    assert json.loads((tmp_path / "straight" / "bundle" / "bundle.json").read_text())["window"] == [16, 32, 32]


def test_triplanar_ensemble_from_the_cli_and_convert_fuses_members(prepared, tmp_path):
    run = tmp_path / "tri"
    cmd = [sys.executable, "-m", "medtrans", "train", "--data", str(prepared), "--out", str(run), "--planes",
           "axial,coronal,sagittal", "--max-steps", "4", "--device", "cpu",
           *[a for o in TINY for a in ("--set", o)]]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    record = json.loads((run / "ensemble.json").read_text())
    assert [m["plane"] for m in record["members"]] == ["axial", "coronal", "sagittal"]
    for m in record["members"]:
        bundle = json.loads((run / m["name"] / "bundle" / "bundle.json").read_text())
        assert bundle["model"]["plane"] == m["plane"]
    mr = prepared / "phantom_000" / "mr.nii.gz"
    res = convert_cohort(run, mr, tmp_path / "fused", device="cpu", progress=False, uncertainty=True)[0]
    assert res["status"] == "ok" and res["models"] == 3 and res["uncertainty"]["models"] == 3
    members = [convert_cohort(run / m["name"], mr, tmp_path / m["name"], device="cpu", progress=False)[0]
               for m in record["members"]]
    assert all(m["status"] == "ok" for m in members)
    # a rerun of the ensemble command resumes: finished members are kept
    r = subprocess.run([*cmd, "--resume"], capture_output=True, text=True)
    assert r.returncode == 0 and "member0_axial (step 4)" in r.stdout, r.stderr[-2000:]


def test_ensemble_of_seeds_averages_members(prepared, tmp_path):
    from medtrans.training.ensemble import train_ensemble

    cfg = load_config(None, overrides=[*TINY, "train.max_steps=3"])
    summary = train_ensemble(prepared, tmp_path / "ens", cfg, ensemble=2, device="cpu", progress=False)
    assert [m["member"] for m in summary["members"]] == ["member0_axial", "member1_axial"]
    w0, w1 = _weights(tmp_path / "ens" / "member0_axial"), _weights(tmp_path / "ens" / "member1_axial")
    assert any(not torch.equal(w0[k], w1[k]) for k in w0)  # different seeds, different members
    mr = prepared / "phantom_000" / "mr.nii.gz"
    out = {}
    for name, model in (("ens", [tmp_path / "ens"]), ("a", [tmp_path / "ens" / "member0_axial"]),
                        ("b", [tmp_path / "ens" / "member1_axial"])):
        assert convert_cohort(model, mr, tmp_path / f"sct_{name}", device="cpu", progress=False)[0]["status"] == "ok"
        out[name] = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / f"sct_{name}" / "mr" / "sct.nii.gz")))
    mean = (out["a"].astype(np.float32) + out["b"]) / 2
    assert np.abs(out["ens"] - mean).max() <= 1.0  # the ensemble is the members' mean (int16 rounding)


def test_the_bias_field_multiplies_the_signal_about_each_cases_own_background():
    """Used to assume the normalized background is -1: with z-score normalization (background -mean/std) the field
    shifted air and tissue alike. Zero signal stays zero signal, whatever the normalization."""
    for background in (-1.0, -0.37):
        bank, _ = coordinate_bank(3)
        bank.mr = torch.where(bank.mask.bool() & (bank.mr > 20), bank.mr, torch.tensor(background)).half()
        bank.background = torch.full((bank.num_samples,), background)
        for plane in ("axial", "coronal"):
            plain = BatchStream(bank, batch_size=4, crop=16, flip=False, seed=2, rank=0, world=1, plane=plane)
            biased = BatchStream(bank, batch_size=4, crop=16, flip=False, seed=2, rank=0, world=1, plane=plane,
                                 bias_field=0.5)
            mr0, _, _ = plain.batch(0)
            mr1, _, _ = biased.batch(0)
            air = mr0 == torch.tensor(background).half().float()  # the slices are float16
            assert air.any() and (~air).any()
            assert torch.allclose(mr1[air], mr0[air], atol=1e-3), (background, plane)
            assert not torch.allclose(mr1[~air], mr0[~air])
