"""Typed configuration: dataclass defaults, YAML files and ``--set section.key=value`` overrides.

The dataclass defaults are the single source of truth; ``configs/default.yaml`` is their dump (a test
keeps the two equal) and other files under ``configs/`` override a subset.

Example:
    >>> cfg = load_config(None, overrides=["train.batch_size=4", "model.context_slices=3"])
    >>> cfg.train.batch_size, cfg.model.context_slices
    (4, 3)
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml

from medtrans.errors import ConfigError

#: The named configs (the checkout's ``configs/``, installed as the package ``medtrans.configs``).
CONFIG_DIR = Path(str(files("medtrans.configs")))


@dataclass
class PrepareConfig:
    """How raw cases become a paired, normalized slice dataset."""

    registration: str = "rigid"  #: rigid | affine | rigid+bspline | none (inputs already aligned)
    registration_levels_mm: list[float] = field(default_factory=lambda: [4.0, 2.0])  #: working-grid spacing of each pyramid level (mm, coarse to fine; never finer than the image)
    registration_samples: int = 50000  #: Mattes MI samples inside the MR body per level (a count: the cost does not grow with the scan)
    registration_iterations: int = 200  #: optimizer iterations per level (a stage stopped by this limit is recorded)
    registration_search: bool = True  #: search the start over 24 axis-aligned orientations and centre-of-mass shifts
    registration_seed: int = 42  #: sampling seed, so that preparation is deterministic
    registration_threads: int = 1  #: SimpleITK threads in registration; 1 is bit-reproducible, 0 uses all cores
    bspline_mesh: int = 4  #: control-point mesh size per axis of the optional B-spline stage
    n4: bool = False  #: N4 bias-field correction of the MR before normalization (slower)
    mr_norm: str = "percentile"  #: percentile (0 -> -1, high percentile -> 1) | zscore
    mr_percentile: float = 99.5  #: upper percentile of the MR foreground mapped to 1
    spacing: list[float] = field(default_factory=list)  #: working spacing [x, y] or [x, y, z] mm on the canonical axes; [] = the cohort's median in-plane MR spacing (through-plane native)
    slice_size: list[int] = field(default_factory=lambda: [256, 256])  #: in-plane size [rows, cols] kept
    min_body_fraction: float = 0.1  #: slices whose body area is below this fraction of the case's largest are dropped
    split: list[float] = field(default_factory=lambda: [0.7, 0.15, 0.15])  #: train/val/test, by patient
    split_seed: int = 0  #: seed of the patient-level split
    qa_registration_check: bool = True  #: register again independently and measure the disagreement in mm
    qa_max_mm: float = 3.0  #: flag a case whose independent registration disagrees by more than this (mean over the body)
    qa_keep_flagged: bool = False  #: keep flagged cases in the split (by default they are left out of training and evaluation)


@dataclass
class ModelConfig:
    """Generator (MONAI UNet + plain head) and discriminator (MONAI PatchDiscriminator)."""

    spatial_dims: int = 2  #: 2 = slice model (2D/2.5D); 3 = 3D patch model (sliding-window inference)
    plane: str = "axial"  #: slice plane of a 2D/2.5D model: axial | coronal | sagittal | all (one model, every plane)
    context_slices: int = 3  #: MR slices given as channels (1 = 2D, 3/5 = 2.5D), odd; 1 for 3D
    channels: list[int] = field(default_factory=lambda: [32, 64, 128, 256])  #: UNet features per level
    strides: list[int] = field(default_factory=lambda: [2, 2, 2])  #: UNet down-sampling strides
    num_res_units: int = 2  #: residual units per UNet block
    norm: str = "batch"  #: batch | instance (batch: whole-slice inference sees the statistics training saw)
    head_features: int = 16  #: UNet output features fed to the 1x1 convolution head
    disc_channels: int = 64  #: PatchDiscriminator base features
    disc_layers: int = 3  #: PatchDiscriminator layers (3 gives a 70x70 receptive field)
    patch_depth: int = 32  #: 3D: slices per training patch and inference window (in-plane: train.crop_size)
    sw_overlap: float = 0.5  #: 3D: overlap of sliding inference windows (Gaussian-weighted blending)
    predict_error: bool = True  #: a second output: the expected |error| per voxel (Laplace scale; docs/trust.md)

    @property
    def total_stride(self) -> int:
        """The factor every input side must be divisible by (the product of the UNet's strides)."""
        return math.prod(self.strides)


@dataclass
class TrainConfig:
    """Optimization, losses and run bookkeeping."""

    batch_size: int = 16
    crop_size: int = 96  #: random square crops (pixels); must be divisible by the UNet's total stride
    lr: float = 2e-4
    betas: list[float] = field(default_factory=lambda: [0.5, 0.999])
    max_steps: int = 3000
    decay_from: float = 0.5  #: fraction of max_steps after which the learning rate decays linearly to 0
    l1_weight: float = 100.0  #: lambda of the L1 term
    gan_weight: float = 0.0  #: weight of the PatchGAN term (pix2pix: 1); 0 trains a pure regression UNet
    gan_loss: str = "least_squares"  #: least_squares | bce | hinge
    masked_l1: bool = True  #: L1 weighted 1 inside the body mask, 0.1 outside
    error_weight: float = 1.0  #: weight of the error output's Laplace negative log-likelihood (model.predict_error)
    flip: bool = True  #: random left-right flips
    bias_field: float = 0.2  #: MR augmentation: random smooth multiplicative field, coefficients up to this (0 = off)
    val_every: int = 250  #: steps between validations on whole validation volumes
    checkpoint_every: int = 250  #: steps between checkpoints (also written at the end)
    amp: bool = True  #: bf16 autocast on CUDA (ignored on CPU)
    channels_last: bool = True  #: channels_last memory format on CUDA
    compile: bool = False  #: torch.compile the generator and discriminator
    threads: int = 0  #: CPU threads (0 = all cores)


@dataclass
class Config:
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def dump(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


#: Keys added after runs and bundles were first saved, with the value that reproduces what a config saved without
#: them trained (the error output did not exist): applied to every saved config read back (resume, bundles).
LEGACY_DEFAULTS: dict[str, dict[str, Any]] = {"model": {"predict_error": False}, "train": {"error_weight": 1.0}}


def with_legacy_defaults(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved config with the keys it predates filled in as :data:`LEGACY_DEFAULTS` says (a copy).

    Example:
        >>> with_legacy_defaults({"model": {"channels": [8]}})["model"]
        {'channels': [8], 'predict_error': False}
        >>> with_legacy_defaults({"model": {"predict_error": True}})["model"]["predict_error"]
        True
    """
    out = {section: dict(values) if isinstance(values, dict) else values for section, values in saved.items()}
    for section, keys in LEGACY_DEFAULTS.items():
        values = out.get(section, {})
        if isinstance(values, dict):
            out[section] = {**values, **{k: v for k, v in keys.items() if k not in values}}
    return out


#: The shipped config ``medtrans train`` uses on a CUDA device when no ``--config`` is given.
GPU_PROFILE = "gpu"


def choose_profile(config: str | Path | None, *, resume: bool, device: str,
                   cuda_available: bool | None = None) -> tuple[str | Path | None, str | None]:
    """The config ``medtrans train`` runs with, and a note saying so when it chose the GPU profile itself.

    On a CUDA device (``--device cuda``, or ``auto`` with CUDA present) and without ``--config``, the GPU profile
    (``configs/gpu.yaml``) is used; an explicit ``--config`` (``default`` included) is always respected, and a
    resume keeps the run's saved config.

    Example:
        >>> choose_profile(None, resume=False, device="cuda", cuda_available=True)[0]
        'gpu'
        >>> choose_profile("default", resume=False, device="cuda", cuda_available=True)
        ('default', None)
    """
    if config is not None or resume:
        return config, None
    if cuda_available is None and device == "auto":
        import torch  # only here: choosing a profile on "auto" needs to know whether CUDA is present

        cuda_available = torch.cuda.is_available()
    cuda = device.startswith("cuda") or (device == "auto" and bool(cuda_available))
    if not cuda:
        return config, None
    return GPU_PROFILE, (f"GPU profile: configs/{GPU_PROFILE}.yaml (chosen for the CUDA device; "
                         "--config default keeps the CPU-sized model)")


def named_configs() -> list[str]:
    """The names ``--config`` accepts without a path (the YAML files shipped in :data:`CONFIG_DIR`)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def resolve_config_path(name_or_path: str | Path) -> Path:
    """A bare name (no folder, no ``.yaml``) is a shipped config; anything else is a path to a YAML file.

    A name never looks at the working directory, so ``--config demo`` means the shipped demo config even
    where ``./demo`` is a folder.

    Example:
        >>> resolve_config_path("pix2pix").name
        'pix2pix.yaml'
    """
    text = str(name_or_path)
    p = Path(text)
    if not any(sep in text for sep in ("/", os.sep)) and p.suffix.lower() not in (".yaml", ".yml"):
        named = CONFIG_DIR / f"{text}.yaml"
        if named.is_file():
            return named
        raise ConfigError(f"config '{text}' not found: the named configs are {', '.join(named_configs())} "
                          "(or give a path to a .yaml file)")
    if p.is_dir():
        raise ConfigError("is a folder, not a YAML config file", path=p)
    if not p.is_file():
        raise ConfigError("config file does not exist", path=p)
    return p


def load_config(path: str | Path | None, *, overrides: list[str] | None = None,
                base: dict[str, Any] | None = None) -> Config:
    """Build a :class:`Config` from defaults, then ``base``, then a YAML file, then ``key=value`` overrides."""
    cfg = Config()
    if base:
        _apply(cfg, base, origin="saved config")
    if path is not None:
        p = resolve_config_path(path)
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot be read: {exc}", path=p) from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"is not valid YAML: {exc}", path=p) from None
        if not isinstance(data, dict):
            raise ConfigError("must be a mapping of sections", path=p)
        _apply(cfg, data, origin=str(p))
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like section.key=value")
        key, raw = item.split("=", 1)
        if "." not in key:
            raise ConfigError(f"override '{item}' must name a section, e.g. train.batch_size=8")
        section, name = key.split(".", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:  # an unclosed bracket, an unknown !!tag (never executed: the loader is safe)
            reason = str(getattr(exc, "problem", None) or exc).splitlines()[0]
            raise ConfigError(f"--set {item}: the value is not valid YAML ({reason})") from None
        _apply(cfg, {section: {name: value}}, origin=f"--set {item}")
    validate(cfg)
    return cfg


#: Keys of earlier versions: a saved config (a run's, a manifest's) may still hold them; a user's file or --set may not.
RETIRED_KEYS: dict[tuple[str, str], str] = {
    ("prepare", "registration_sampling"): "registration samples a fixed count now (prepare.registration_samples), "
                                          "so that its cost does not grow with the scan",
    ("prepare", "registration_shrink"): "the pyramid is in millimetres now (prepare.registration_levels_mm)",
}


def _apply(cfg: Config, data: dict[str, Any], *, origin: str) -> None:
    for section, values in data.items():
        if not hasattr(cfg, section) or section.startswith("_"):
            raise ConfigError(f"{origin}: unknown config section '{section}'")
        target = getattr(cfg, section)
        if not isinstance(values, dict):
            raise ConfigError(f"{origin}: section '{section}' must be a mapping")
        known = {f.name: f for f in dataclasses.fields(target)}
        for key, value in values.items():
            if (section, key) in RETIRED_KEYS:
                if origin == "saved config":  # written by an earlier version: its replacement has its default
                    continue
                raise ConfigError(f"{origin}: '{section}.{key}' is no longer used: {RETIRED_KEYS[section, key]}")
            if key not in known:
                raise ConfigError(f"{origin}: unknown key '{section}.{key}' (known: {', '.join(known)})")
            current = getattr(target, key)
            setattr(target, key, _coerce(value, current, f"{origin}: {section}.{key}"))


def _coerce(value: Any, current: Any, where: str) -> Any:
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, not {value!r}")
        return value
    if isinstance(current, (int, float)) and not isinstance(current, bool):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{where} must be a finite number, not {value!r}")
        if isinstance(current, int) and not float(value).is_integer():
            raise ConfigError(f"{where} must be an integer, not {value!r}")
        return type(current)(value)
    if isinstance(current, list):
        if not isinstance(value, list):
            raise ConfigError(f"{where} must be a list, not {value!r}")
        return list(value)
    if isinstance(current, str) and not isinstance(value, str):
        raise ConfigError(f"{where} must be a string, not {value!r}")
    return value


#: A working spacing (``prepare.spacing``) outside this range (mm) is refused before any work.
MIN_SPACING_MM, MAX_SPACING_MM = 0.1, 20.0
#: (section, key) -> (lowest allowed, highest allowed, what it is); None = unbounded on that side.
RANGES: dict[tuple[str, str], tuple[float | None, float | None]] = {
    ("prepare", "registration_samples"): (1000, 10_000_000),
    ("prepare", "registration_iterations"): (1, None),
    ("prepare", "registration_threads"): (0, None),
    ("prepare", "bspline_mesh"): (1, None),
    ("prepare", "mr_percentile"): (50.0, 100.0),
    ("prepare", "min_body_fraction"): (0.0, 1.0),
    ("prepare", "qa_max_mm"): (0.0, None),
    ("model", "head_features"): (1, None),
    ("model", "disc_channels"): (1, None),
    ("model", "disc_layers"): (1, None),
    ("model", "num_res_units"): (0, None),
    ("model", "patch_depth"): (4, None),
    ("model", "sw_overlap"): (0.0, 0.9),
    ("train", "batch_size"): (1, None),
    ("train", "crop_size"): (8, None),
    ("train", "lr"): (1e-12, 1.0),
    ("train", "max_steps"): (1, None),
    ("train", "decay_from"): (0.0, 1.0),
    ("train", "l1_weight"): (0.0, None),
    ("train", "gan_weight"): (0.0, None),
    ("train", "bias_field"): (0.0, 1.0),
    ("train", "val_every"): (1, None),
    ("train", "checkpoint_every"): (1, None),
    ("train", "threads"): (0, None),
}


def validate(cfg: Config) -> None:
    """Cross-field checks that dataclass types cannot express (raising one :class:`ConfigError` up front).

    What a model mode asks of the config (a 3D model's patch depth, ...) is checked by the mode itself:
    :func:`medtrans.modes.check_mode`, which ``train`` and ``convert`` call before any work.

    Example:
        >>> load_config(None, overrides=["prepare.mr_percentile=150"])
        Traceback (most recent call last):
        ...
        medtrans.errors.ConfigError: prepare.mr_percentile is 150.0; it must be between 50.0 and 100.0
    """
    for check in (_check_ranges, _check_lists, _check_prepare, _check_choices, _check_model):
        check(cfg)


def _check_ranges(cfg: Config) -> None:
    for (section, key), (lo, hi) in RANGES.items():
        v = getattr(getattr(cfg, section), key)
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            bounds = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
            raise ConfigError(f"{section}.{key} is {v}; it must be {bounds}")


def _check_lists(cfg: Config) -> None:
    lists = {("model", "channels"): 1, ("model", "strides"): 1, ("prepare", "registration_levels_mm"): 0.1,
             ("prepare", "slice_size"): 8, ("train", "betas"): 0}
    for (section, key), lo in lists.items():
        values = getattr(getattr(cfg, section), key)
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            raise ConfigError(f"{section}.{key} must be a list of numbers, not {values!r}")
        if any(v < lo for v in values):
            raise ConfigError(f"{section}.{key} is {values}; every entry must be at least {lo}")
    if len(cfg.train.betas) != 2 or not all(0 <= b < 1 for b in cfg.train.betas):
        raise ConfigError("train.betas must be two numbers in [0, 1)")


def _check_prepare(cfg: Config) -> None:
    p = cfg.prepare
    if len(p.spacing) not in (0, 2, 3) or any(not isinstance(v, (int, float)) or isinstance(v, bool)
                                               or not v > 0 for v in p.spacing):
        raise ConfigError(f"prepare.spacing is {p.spacing}; it must be [] (the cohort's median), "
                          "[x, y] or [x, y, z] in mm, every entry positive")
    if p.spacing and not all(MIN_SPACING_MM <= v <= MAX_SPACING_MM for v in p.spacing):
        raise ConfigError(f"prepare.spacing is {p.spacing}; every entry must be between {MIN_SPACING_MM} and "
                          f"{MAX_SPACING_MM} mm (a working grid finer than scanners acquire, or coarser than a body, "
                          "is a typo)")
    if not p.registration_levels_mm:
        raise ConfigError("prepare.registration_levels_mm needs at least one level (mm), e.g. [4, 2]")
    if len(p.slice_size) != 2:
        raise ConfigError("prepare.slice_size must be [rows, cols]")
    if len(p.split) != 3 or any(f < 0 for f in p.split) or abs(sum(p.split) - 1) > 1e-6:
        raise ConfigError("prepare.split must be three fractions (train, val, test), none negative, summing to 1")


def _check_choices(cfg: Config) -> None:
    choices = {
        ("prepare", "registration"): ("rigid", "affine", "rigid+bspline", "none"),
        ("prepare", "mr_norm"): ("percentile", "zscore"),
        ("model", "norm"): ("instance", "batch"),
        ("train", "gan_loss"): ("least_squares", "bce", "hinge"),
    }
    for (section, key), allowed in choices.items():
        if getattr(getattr(cfg, section), key) not in allowed:
            raise ConfigError(f"{section}.{key} must be one of {', '.join(allowed)}")


def _check_model(cfg: Config) -> None:
    m = cfg.model
    if m.context_slices < 1 or m.context_slices % 2 == 0:
        raise ConfigError("model.context_slices must be a positive odd number")
    if len(m.strides) != len(m.channels) - 1:
        raise ConfigError("model.strides needs one entry fewer than model.channels")
    if cfg.train.crop_size % m.total_stride:
        raise ConfigError(f"train.crop_size must be divisible by the UNet's total stride {m.total_stride}")
    if any(s % m.total_stride for s in cfg.prepare.slice_size):
        raise ConfigError(f"prepare.slice_size must be divisible by the UNet's total stride {m.total_stride}")
