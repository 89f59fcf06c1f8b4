"""Checkpoints and ``--resume``: what a checkpoint holds, and what a resumed run must keep.

A checkpoint holds the step, the seed, the best validation result, the learning-rate schedule (:mod:`.budget`), the
resolved config, what the weights were trained on (the prepared dataset's MR normalization and working spacing), the
networks, optimizers and schedulers, and the random state: resuming at any step reproduces the run bit for bit on a
CPU. A resumed run keeps its saved config (only :data:`RESUME_SAFE_KEYS`, which cannot change the weights, may differ)
and its dataset's normalization and spacing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import yaml

from medtrans.config import Config, with_legacy_defaults
from medtrans.errors import ConfigError, DatasetError, MedtransError
from medtrans.fsutil import load_torch, save_torch
from medtrans.runs import RunFolder

#: Config keys a resumed run may change: they steer bookkeeping, not the weights.
RESUME_SAFE_KEYS = frozenset({"train.threads", "train.val_every", "train.checkpoint_every"})


def checkpoint_file(out: str | Path) -> Path:
    """Where a run keeps the checkpoint that ``--resume`` continues from."""
    return RunFolder(out).checkpoint


def _config_of(state: Any, path: Path) -> dict[str, Any]:
    try:
        return with_legacy_defaults(json.loads(state["config_json"]))
    except (KeyError, TypeError, json.JSONDecodeError):
        raise MedtransError("the checkpoint holds no config; it was not written by medtrans train", path=path) from None


def saved_config(out: str | Path) -> dict[str, Any]:
    """The resolved config a run runs with: its ``config.yaml`` (cheap), else its last checkpoint's.

    The trainer itself compares a resume against the checkpoint's copy, which is what the weights were trained with.
    """
    run = RunFolder(out)
    if run.config_file.is_file():
        try:
            data = yaml.safe_load(run.config_file.read_text())
            if isinstance(data, dict):
                return with_legacy_defaults(data)
        except (OSError, yaml.YAMLError):
            pass
    return _config_of(load_torch(run.checkpoint, what="the run's last checkpoint"), run.checkpoint)


def config_differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """``section.key`` names whose values differ between two config dicts."""
    return [f"{section}.{key}" for section in a for key in a[section]
            if a[section][key] != b.get(section, {}).get(key)]


def resume_state(run: RunFolder, cfg: Config, dataset: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint to continue from, after checking that the run may continue with ``cfg`` on ``dataset``.

    Raises:
        MedtransError: no checkpoint.
        ConfigError: config keys other than :data:`RESUME_SAFE_KEYS` differ from the run's.
        DatasetError: the prepared dataset normalizes the MR otherwise, or works at another spacing, than the one
            the weights were trained on.
    """
    if not run.checkpoint.is_file():
        raise MedtransError(f"--resume: no checkpoint at {run.checkpoint}")
    state = load_torch(run.checkpoint, what="the run's last checkpoint")
    changed = [k for k in config_differences(cfg.to_dict(), _config_of(state, run.checkpoint))
               if k not in RESUME_SAFE_KEYS]
    if changed:
        raise ConfigError(f"--resume keeps the run's saved config, but these keys differ from it: "
                          f"{', '.join(changed)}; start a new run to change them (a resume may change only "
                          f"{', '.join(sorted(RESUME_SAFE_KEYS))})")
    trained_on = state.get("dataset")
    if isinstance(trained_on, dict):
        for key, what in (("normalization", "normalizes the MR"), ("spacing", "works at the spacing")):
            if trained_on.get(key) != dataset.get(key):
                raise DatasetError(f"--resume onto another prepared dataset: it {what} {dataset.get(key)} where the "
                                   f"run's weights were trained with {trained_on.get(key)} (on {trained_on.get('path')}"
                                   "); start a new run for this dataset", path=dataset.get("path"))
    return state


def save_checkpoint(run: RunFolder, *, step: int, seed: int, best: tuple[float, int], schedule: dict[str, Any],
                    cfg: Config, dataset: dict[str, Any], nets: dict[str, Any]) -> None:
    """Write ``checkpoints/last.pt`` atomically (``nets``: state dicts of networks, optimizers and schedulers)."""
    save_torch(run.checkpoint, {
        "step": step, "seed": seed, "best_mae": best[0], "best_step": best[1], **schedule,
        "config_json": json.dumps(cfg.to_dict()), "dataset": dataset, "torch_rng": torch.get_rng_state(),
        **{name: obj.state_dict() for name, obj in nets.items()},
    })
