"""The end of a run: the model bundle ``convert`` loads (the best validation weights, else the last), with the
profile of the training MRs that convert's input checks compare new MRs with."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from medtrans.bundle import save_bundle
from medtrans.config import Config
from medtrans.fsutil import load_torch
from medtrans.intensity import MRNormalization
from medtrans.prepared import PreparedDataset
from medtrans.qa import mr_profile, training_profile
from medtrans.runs import RunFolder


def export_bundle(run: RunFolder, dataset: PreparedDataset, cfg: Config, *, spec: MRNormalization,
                  spacing: list[float] | None, window: tuple[int, int, int] | None, generator: torch.nn.Module,
                  seed: int, result: dict[str, Any], error_calibration: dict[str, Any] | None = None) -> Path:
    """Write ``RUN/bundle`` from the run's best checkpoint (or ``generator``'s weights when nothing was validated)."""
    best = run.best_checkpoint
    weights = load_torch(best, what="the best checkpoint")["generator"] if best.exists() else generator.state_dict()
    # what the input checks of convert compare an MR with (medtrans.qa): the training MRs' profile
    profile = training_profile([mr_profile(dataset.case(name).read("mr"), spec) for name in dataset.split("train")])
    return save_bundle(run.bundle_dir, model=cfg.model, mr_normalization=spec, state_dict=weights, spacing=spacing,
                       info={"training_profile": profile, "window": list(window) if window else None, "seed": seed,
                             "trained_steps": result["step"],
                             "selected": "best validation MAE" if best.exists() else "last step",
                             "best_val_mae_hu": result["best_val_mae"], "best_step": result["best_step"],
                             "dataset": str(dataset.root.resolve()), "split": dataset.manifest["split"],
                             "error_calibration": error_calibration})
