"""The model bundle: everything ``medtrans convert`` needs, in one folder.

``bundle.json`` holds the architecture, the MR normalization, the input spec (context slices,
canonical orientation) and provenance; ``model.pt`` holds the generator's weights (a plain state dict,
loaded with ``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import medtrans
from medtrans.config import ModelConfig
from medtrans.errors import DatasetError
from medtrans.fsutil import atomic_path, sha256_of, write_json
from medtrans.geometry import CANONICAL_ORIENTATION
from medtrans.intensity import MRNormalization
from medtrans.models import Generator

BUNDLE_FORMAT = "medtrans-bundle/1"


@dataclass
class Bundle:
    model: ModelConfig
    mr_normalization: MRNormalization
    info: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    path: Path | None = None

    def generator(self) -> Generator:
        g = Generator(self.model)
        g.load_state_dict(self.state_dict)
        return g.eval()

    def hash(self) -> str:
        return sha256_of(self.path) if self.path else ""


def save_bundle(folder: str | Path, *, model: ModelConfig, mr_normalization: MRNormalization,
                state_dict: dict[str, torch.Tensor], info: dict[str, Any]) -> Path:
    """Write a bundle (weights first, then the JSON that makes it valid)."""
    folder = Path(folder)
    with atomic_path(folder / "model.pt") as tmp:
        torch.save({k: v.detach().cpu() for k, v in state_dict.items()}, tmp)
    write_json(folder / "bundle.json", {
        "format": BUNDLE_FORMAT,
        "medtrans_version": medtrans.__version__,
        "model": dataclasses.asdict(model),
        "mr_normalization": mr_normalization.to_dict(),
        "input": {"context_slices": model.context_slices, "orientation": CANONICAL_ORIENTATION,
                  "ct_range_hu": [-1024.0, 3000.0]},
        **info,
    })
    return folder


def resolve_bundle_dir(path: str | Path) -> Path:
    """A bundle folder, or a training run folder holding ``bundle/``."""
    p = Path(path)
    for candidate in (p, p / "bundle"):
        if (candidate / "bundle.json").is_file():
            return candidate
    raise DatasetError("is neither a model bundle (bundle.json + model.pt) nor a training run with bundle/",
                       path=p)


def load_bundle(path: str | Path) -> Bundle:
    """Load a bundle or a run's bundle, checking its format."""
    folder = resolve_bundle_dir(path)
    try:
        meta = json.loads((folder / "bundle.json").read_text())
    except json.JSONDecodeError as exc:
        raise DatasetError(f"bundle.json is not valid JSON: {exc}", path=folder) from None
    if meta.get("format") != BUNDLE_FORMAT:
        raise DatasetError(f"unsupported bundle format {meta.get('format')!r} (expected {BUNDLE_FORMAT})",
                           path=folder)
    weights = folder / "model.pt"
    if not weights.is_file():
        raise DatasetError("model.pt is missing", path=folder)
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DatasetError(f"model.pt cannot be loaded: {exc}", path=weights) from None
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    model = ModelConfig(**{k: v for k, v in meta["model"].items() if k in known})
    return Bundle(model=model, mr_normalization=MRNormalization.from_dict(meta["mr_normalization"]),
                  info=meta, state_dict=state, path=folder)
