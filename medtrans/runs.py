"""A training run on disk: the one home of ``medtrans train``'s folder layout, read by the trainer, ``--resume``,
ensembles and ``convert --model``.

``RUN/config.yaml`` (the resolved config), ``environment.json``, ``metrics.jsonl`` (one JSON record per log line),
``checkpoints/last.pt`` (what ``--resume`` continues) and ``checkpoints/best.pt`` (the best validation MAE),
``bundle/`` (what ``convert`` loads) and ``summary.json`` (written when a run ends). An ensemble run (``train
--ensemble``/``--planes``) holds ``ensemble.json`` and one complete run folder per member.

Example:
    >>> RunFolder("RUN").checkpoint.as_posix()
    'RUN/checkpoints/last.pt'
    >>> RunFolder("RUN").member("member0_axial").bundle_dir.as_posix()
    'RUN/member0_axial/bundle'
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medtrans.errors import DatasetError

ENSEMBLE_FILE = "ensemble.json"


@dataclass(frozen=True)
class RunFolder:
    """Paths of one run folder (nothing is read until asked)."""

    path: Path

    def __init__(self, path: str | Path) -> None:
        object.__setattr__(self, "path", Path(path))

    @property
    def checkpoint(self) -> Path:
        """The checkpoint ``--resume`` continues from (written every ``train.checkpoint_every`` steps and at the end)."""
        return self.path / "checkpoints" / "last.pt"

    @property
    def best_checkpoint(self) -> Path:
        return self.path / "checkpoints" / "best.pt"

    @property
    def config_file(self) -> Path:
        return self.path / "config.yaml"

    @property
    def environment_file(self) -> Path:
        return self.path / "environment.json"

    @property
    def metrics_log(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def summary_file(self) -> Path:
        return self.path / "summary.json"

    @property
    def bundle_dir(self) -> Path:
        return self.path / "bundle"

    @property
    def ensemble_file(self) -> Path:
        return self.path / ENSEMBLE_FILE

    def member(self, name: str) -> RunFolder:
        return RunFolder(self.path / name)

    def is_ensemble(self) -> bool:
        return self.ensemble_file.is_file()

    def append_log(self, record: dict[str, Any]) -> None:
        """One line of ``metrics.jsonl`` (appended; a killed run loses at most its last line)."""
        with open(self.metrics_log, "a") as fh:
            fh.write(json.dumps(record) + "\n")

    def summary(self) -> dict[str, Any] | None:
        """``summary.json`` (None while the run has not ended, or when unreadable)."""
        try:
            data = json.loads(self.summary_file.read_text())
        except (OSError, json.JSONDecodeError):
            return None
        return data if isinstance(data, dict) else None

    def ensemble_record(self) -> dict[str, Any]:
        """``ensemble.json``: the members, the planes, the budget and the config of an ensemble run."""
        try:
            record = json.loads(self.ensemble_file.read_text())
            if not isinstance(record, dict) or not isinstance(record["members"], list):
                raise TypeError("no list of members")
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
            raise DatasetError(f"{ENSEMBLE_FILE} cannot be read: {exc}", path=self.path) from None
        return record

    def model_folders(self) -> list[Path]:
        """The model folders this run stands for: every member of an ensemble run, else the run itself.

        Raises:
            DatasetError: an ensemble run whose record is unreadable or whose members have not all finished.
        """
        if not self.is_ensemble():
            return [self.path]
        names = [m["name"] for m in self.ensemble_record()["members"]]
        unfinished = [n for n in names if not (self.member(n).bundle_dir / "bundle.json").is_file()]
        if unfinished:
            raise DatasetError(f"ensemble members not trained yet: {', '.join(unfinished)} (finish them with "
                               "medtrans train --resume)", path=self.path)
        return [self.member(n).path for n in names]
