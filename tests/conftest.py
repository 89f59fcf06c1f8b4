"""Shared fixtures: the ../shared material (skipped when absent), phantom cohorts, a tiny trained run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
os.environ.setdefault("OMP_NUM_THREADS", "2")

TINY = [
    "prepare.slice_size=[128,128]", "model.channels=[8,16,32]", "model.strides=[2,2]", "model.num_res_units=1",
    "model.head_features=8", "model.disc_channels=8", "train.batch_size=4", "train.crop_size=64",
    "train.max_steps=400", "train.val_every=1000", "train.checkpoint_every=1000",
]


def shared_path(*parts: str) -> Path:
    """A path under ../shared/data, skipping the test with the reason when it is absent."""
    p = SHARED.joinpath("data", *parts)
    if not p.exists():
        pytest.skip(f"{p} is absent: ../shared (real test images) is only beside the project checkout")
    return p


def rewrite_bundle_weights(bundle: Path, state: dict) -> None:
    """Replace a bundle's weights the way a retrain would: the new model.pt and its SHA-256 in bundle.json."""
    import json

    import torch

    from medtrans.fsutil import sha256_of

    torch.save(state, bundle / "model.pt")
    meta = json.loads((bundle / "bundle.json").read_text())
    meta["model_sha256"] = sha256_of(bundle / "model.pt")
    (bundle / "bundle.json").write_text(json.dumps(meta))


@pytest.fixture(scope="session")
def aligned_cohort(tmp_path_factory) -> Path:
    from medtrans.phantom import make_cohort

    out = tmp_path_factory.mktemp("aligned")
    make_cohort(out, cases=4, seed=3, aligned=True)
    return out


@pytest.fixture(scope="session")
def raw_cohort(tmp_path_factory) -> Path:
    from medtrans.phantom import make_cohort

    out = tmp_path_factory.mktemp("raw")
    make_cohort(out, cases=3, seed=5, aligned=False)
    return out


@pytest.fixture(scope="session")
def prepared(tmp_path_factory, aligned_cohort) -> Path:
    from medtrans.config import load_config
    from medtrans.data_prep.pipeline import prepare_cohort

    out = tmp_path_factory.mktemp("prep")
    cfg = load_config(None, overrides=[*TINY, "prepare.split=[0.5,0.25,0.25]"])
    manifest = prepare_cohort(aligned_cohort, out, cfg, progress=False)
    assert not manifest["failed"], manifest["failed"]
    return out


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, prepared) -> Path:
    """A tiny regression generator trained for a few hundred steps (shared by convert/evaluate tests)."""
    from medtrans.config import load_config
    from medtrans.training.trainer import train

    out = tmp_path_factory.mktemp("run")
    cfg = load_config(None, overrides=[*TINY, "train.gan_weight=0", "train.val_every=400"])
    train(prepared, out, cfg, device="cpu", progress=False)
    return out
