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
from medtrans.config import ModelConfig, with_legacy_defaults
from medtrans.errors import DatasetError
from medtrans.fsutil import load_torch, save_torch, sha256_of, write_json
from medtrans.geometry import CANONICAL_ORIENTATION
from medtrans.intensity import CT_RANGE, MRNormalization
from medtrans.models import Generator
from medtrans.runs import RunFolder

BUNDLE_FORMAT = "medtrans-bundle/1"


@dataclass
class Bundle:
    model: ModelConfig
    mr_normalization: MRNormalization
    info: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    path: Path | None = None

    @property
    def spacing(self) -> list[float] | None:
        """The working spacing (canonical x, y[, z] in mm) the model was trained at; None = native (older bundles)."""
        return self.info.get("input", {}).get("spacing") or None

    def generator(self) -> Generator:
        """The generator with the bundle's weights (one clear error if they do not fit its architecture)."""
        g = Generator(self.model)
        load_weights(g, self.state_dict, source=self.path / "model.pt" if self.path else None)
        return g.eval()

    def hash(self) -> str:
        return sha256_of(self.path) if self.path else ""


def save_bundle(folder: str | Path, *, model: ModelConfig, mr_normalization: MRNormalization,
                state_dict: dict[str, torch.Tensor], info: dict[str, Any], spacing: list[float] | None = None) -> Path:
    """Write a bundle (weights first, then the JSON that makes it valid)."""
    folder = Path(folder)
    save_torch(folder / "model.pt", {k: v.detach().cpu() for k, v in state_dict.items()})
    write_json(folder / "bundle.json", {
        "format": BUNDLE_FORMAT,
        "model_sha256": sha256_of(folder / "model.pt"),  # ties the weights to this record (a swapped file is refused)
        "medtrans_version": medtrans.__version__,
        "model": dataclasses.asdict(model),
        "mr_normalization": mr_normalization.to_dict(),
        "input": {"context_slices": model.context_slices, "orientation": CANONICAL_ORIENTATION,
                  "ct_range_hu": list(CT_RANGE), "spacing": spacing or None},
        **info,
    })
    return folder


def load_weights(module: torch.nn.Module, state: dict[str, torch.Tensor], *, source: Path | None) -> None:
    """``module.load_state_dict(state)``, with a one-line error naming what does not fit.

    PyTorch's own error lists every mismatching tensor (over a hundred lines for a UNet); a user only needs to
    know that the weights belong to another architecture, and an example.
    """
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or shapes:
        example = (f"{shapes[0]} is {tuple(state[shapes[0]].shape)} in the file but {tuple(expected[shapes[0]].shape)} "
                   "in the architecture" if shapes else f"e.g. {(missing or unexpected)[0]}")
        raise DatasetError(
            f"the weights do not match the architecture in bundle.json ({len(missing)} missing, {len(unexpected)} "
            f"unexpected, {len(shapes)} of another shape; {example}): bundle.json and model.pt come from "
            "different models", path=source)
    module.load_state_dict(state)


def resolve_bundle_dir(path: str | Path) -> Path:
    """A bundle folder, or a training run folder holding ``bundle/``."""
    p = Path(path)
    for candidate in (p, RunFolder(p).bundle_dir):
        if (candidate / "bundle.json").is_file():
            return candidate
    raise DatasetError("is neither a model bundle (bundle.json + model.pt) nor a training run with bundle/",
                       path=p)


def model_members(path: str | Path) -> list[Path]:
    """The model folders a ``--model`` path stands for: every member of an ensemble run, else the path itself."""
    return RunFolder(path).model_folders()


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
    state = load_torch(weights, what="the model's weights")  # first: a damaged file is reported as damaged
    if meta.get("model_sha256") and meta["model_sha256"] != sha256_of(weights):
        raise DatasetError("model.pt does not belong to this bundle.json: its SHA-256 differs from the one recorded "
                           "when the model was saved (weights copied from another model or run?)", path=weights)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DatasetError("the model's weights are not a state dict of tensors", path=weights)
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    try:
        # bundles written before the error output had none (the field's default is on for new trainings)
        saved = with_legacy_defaults({"model": meta["model"]})["model"]
        model = ModelConfig(**{k: v for k, v in saved.items() if k in known})
    except (KeyError, TypeError, AttributeError) as exc:
        raise DatasetError(f"bundle.json has no valid 'model' section: {exc}", path=folder) from None
    return Bundle(model=model, mr_normalization=MRNormalization.from_dict(meta["mr_normalization"]),
                  info=meta, state_dict=state, path=folder)
