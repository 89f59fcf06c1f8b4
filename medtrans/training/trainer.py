"""The trainer: MONAI UNet generator with a masked L1 loss (the default), plus a PatchGAN term when
``train.gan_weight > 0`` (pix2pix: GAN loss + lambda * L1, ``--config pix2pix``); exact resume, DDP.

``train.max_steps`` in the config is the schedule's horizon (the learning rate decays to zero there);
``--max-steps`` on the command line only says where this invocation stops, so that 8 steps followed by
``--resume --max-steps 16`` equals 16 steps straight, bit for bit on CPU. With ``--max-minutes`` the horizon
follows the budget instead: from :data:`BUDGET_WARMUP_STEPS` steps on, the measured mean time per step estimates
the step at which the budget ends (never beyond ``train.max_steps``), re-estimated every
:data:`BUDGET_WARMUP_STEPS` steps while the rate is constant and fixed when the decay begins; the checkpoint records
it, so a resume continues the same schedule. A resumed run keeps its saved
config; only the keys in :data:`RESUME_SAFE_KEYS` (which cannot change the weights) may differ.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
import torch.distributed as dist
import yaml
from monai.losses import PatchAdversarialLoss
from tqdm import tqdm

import medtrans
from medtrans.bundle import ENSEMBLE_FILE, save_bundle
from medtrans.config import Config, load_config
from medtrans.errors import ConfigError, MedtransError
from medtrans.fsutil import claim_output_dir, load_torch, save_torch, write_json, write_text
from medtrans.inference import PLANE_AXES, Predictor, pick_device
from medtrans.intensity import MRNormalization
from medtrans.models import Discriminator, Generator, sample_shape, total_stride
from medtrans.qa import mr_profile, training_profile
from medtrans.training.data import BatchStream, load_bank, load_manifest

LOG_EVERY = 10
OUTSIDE_MASK_WEIGHT = 0.1  # masked L1 still keeps the background near air
#: A time budget fixes the learning-rate schedule's horizon after this many steps, timing those after the first
#: BUDGET_SKIP_STEPS (which carry one-time costs: allocation, first-touch of the data, thread pools).
BUDGET_WARMUP_STEPS = 25
BUDGET_SKIP_STEPS = 5
#: Config keys a resumed run may change: they steer bookkeeping, not the weights.
RESUME_SAFE_KEYS = frozenset({"train.threads", "train.val_every", "train.checkpoint_every"})


def checkpoint_file(out: str | Path) -> Path:
    """Where a run keeps the checkpoint that ``--resume`` continues from."""
    return Path(out) / "checkpoints" / "last.pt"


def _config_of(state: Any, path: Path) -> dict[str, Any]:
    try:
        return json.loads(state["config_json"])
    except (KeyError, TypeError, json.JSONDecodeError):
        raise MedtransError("the checkpoint holds no config; it was not written by medtrans train", path=path) from None


def saved_config(out: str | Path) -> dict[str, Any]:
    """The resolved config a run runs with: its ``config.yaml`` (cheap), else its last checkpoint's.

    The trainer itself compares a resume against the checkpoint's copy, which is what the weights were trained with.
    """
    text = Path(out) / "config.yaml"
    if text.is_file():
        try:
            data = yaml.safe_load(text.read_text())
            if isinstance(data, dict):
                return data
        except (OSError, yaml.YAMLError):
            pass
    return _config_of(load_torch(checkpoint_file(out), what="the run's last checkpoint"), checkpoint_file(out))


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
    cuda = device.startswith("cuda") or (device == "auto" and (
        torch.cuda.is_available() if cuda_available is None else cuda_available))
    if not cuda:
        return config, None
    return GPU_PROFILE, (f"GPU profile: configs/{GPU_PROFILE}.yaml (chosen for the CUDA device; "
                         "--config default keeps the CPU-sized model)")


def config_differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """``section.key`` names whose values differ between two config dicts."""
    return [f"{section}.{key}" for section in a for key in a[section]
            if a[section][key] != b.get(section, {}).get(key)]


def _dist() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and os.environ.get("MEDTRANS_DDP_BACKEND") != "gloo" else "gloo"
        dist.init_process_group(backend=backend)
    rank = dist.get_rank() if world > 1 else 0
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return rank, world, local


def _lr_factor(horizon: int, decay_from: float):
    start = int(horizon * decay_from)

    def factor(step: int) -> float:
        if step < start:
            return 1.0
        return max(0.0, (horizon - step) / max(1, horizon - start))

    return factor


def masked_l1(fake: torch.Tensor, real: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean absolute error, weighted 1 inside the body and :data:`OUTSIDE_MASK_WEIGHT` outside it."""
    diff = (fake - real).abs()
    if mask is None:
        return diff.mean()
    w = mask + OUTSIDE_MASK_WEIGHT * (1 - mask)
    return (diff * w).sum() / w.sum()


def validate(predictor: Predictor, prep: Path, cases: list[str]) -> dict[str, float]:
    """Whole-volume validation through the inference code: mean MAE/PSNR/SSIM in HU within the mask."""
    from medtrans.evaluation.metrics import compute_metrics

    rows = []
    for name in cases:
        mr = sitk.ReadImage(str(prep / name / "mr.nii.gz"))
        ct = sitk.GetArrayFromImage(sitk.ReadImage(str(prep / name / "ct_registered.nii.gz"))).astype(np.float32)
        mask = sitk.GetArrayFromImage(sitk.ReadImage(str(prep / name / "mask.nii.gz")))
        sct = sitk.GetArrayFromImage(predictor.predict_image(mr))
        rows.append(compute_metrics(ct, sct, mask))
    return {k: float(np.mean([r[k] for r in rows])) for k in ("mae", "psnr", "ssim")}


def optimizers(cfg: Config, gen: torch.nn.Module, disc: torch.nn.Module | None,
               dev: torch.device) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer | None]:
    """Adam for the generator and, in pix2pix mode, the discriminator (fused kernels on CUDA)."""
    fused = dev.type == "cuda"
    make = lambda m: torch.optim.Adam(m.parameters(), lr=cfg.train.lr, betas=tuple(cfg.train.betas), fused=fused)  # noqa: E731
    return make(gen), (make(disc) if disc is not None else None)


class TrainStep:
    """One optimization step of the trainer: what ``medtrans train`` runs, and what the throughput benchmark times.

    The discriminator (pix2pix mode) is updated first on real and generated pairs, then the generator on the
    masked L1 term plus, in pix2pix mode, the adversarial term. Returns the step's (generator loss, L1,
    discriminator loss) as one device tensor, so that the loop needs no host synchronisation.
    """

    def __init__(self, generator: torch.nn.Module, discriminator: torch.nn.Module | None,
                 opt_g: torch.optim.Optimizer, opt_d: torch.optim.Optimizer | None, sched_g: Any, sched_d: Any,
                 train_cfg: Any, *, amp: bool, fmt: torch.memory_format) -> None:
        self.g, self.d = generator, discriminator
        self.opt_g, self.opt_d, self.sched_g, self.sched_d = opt_g, opt_d, sched_g, sched_d
        self.cfg, self.amp, self.fmt = train_cfg, amp, fmt
        self.adv = PatchAdversarialLoss(criterion=train_cfg.gan_loss)

    def _autocast(self, device_type: str) -> Any:
        # without AMP no autocast context at all: the step then also runs on the meta device (FLOP counting)
        return torch.autocast(device_type, dtype=torch.bfloat16) if self.amp else contextlib.nullcontext()

    def __call__(self, mr: torch.Tensor, ct: torch.Tensor, mk: torch.Tensor) -> torch.Tensor:
        device_type = mr.device.type
        if self.fmt is torch.channels_last:
            mr, ct = mr.contiguous(memory_format=self.fmt), ct.contiguous(memory_format=self.fmt)
        with self._autocast(device_type):
            fake = self.g(mr)
        d_loss = torch.zeros((), device=mr.device)
        if self.d is not None:
            self.opt_d.zero_grad(set_to_none=True)
            with self._autocast(device_type):
                logits = self.d(torch.cat([mr, mr]), torch.cat([ct, fake.detach()])).float()
                real_l, fake_l = logits.chunk(2)
                d_loss = 0.5 * (self.adv(real_l, target_is_real=True, for_discriminator=True)
                                + self.adv(fake_l, target_is_real=False, for_discriminator=True))
            d_loss.backward()
            self.opt_d.step()
            self.sched_d.step()
        self.opt_g.zero_grad(set_to_none=True)
        with self._autocast(device_type):
            l1 = masked_l1(fake.float(), ct, mk if self.cfg.masked_l1 else None)
            g_loss = self.cfg.l1_weight * l1
            if self.d is not None:
                g_adv = self.adv(self.d(mr, fake).float(), target_is_real=True, for_discriminator=False)
                g_loss = g_loss + self.cfg.gan_weight * g_adv
        g_loss.backward()
        self.opt_g.step()
        self.sched_g.step()
        return torch.stack([g_loss.detach(), l1.detach(), d_loss.detach()])


#: Dense bf16 tensor-core peak (TFLOP/s) by CUDA device name, for the trainer's utilisation figure (vendor data
#: sheets; first match wins). ``MEDTRANS_PEAK_TFLOPS`` overrides it for any other device.
BF16_PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H200", 989.5), ("H100 PCIe", 756.0), ("H100 NVL", 835.5), ("H100", 989.5), ("GH200", 989.5),
    ("A100", 312.0), ("L40S", 362.1), ("L4", 121.0), ("A10", 125.0), ("RTX 4090", 165.2), ("RTX 6000 Ada", 364.2))


def bf16_peak_tflops(device: torch.device) -> float | None:
    """The device's dense bf16 peak in TFLOP/s (None where unknown, e.g. a CPU, unless MEDTRANS_PEAK_TFLOPS is set).

    Example:
        >>> bf16_peak_tflops(torch.device("cpu")) is None or "MEDTRANS_PEAK_TFLOPS" in os.environ
        True
    """
    if os.environ.get("MEDTRANS_PEAK_TFLOPS"):
        return float(os.environ["MEDTRANS_PEAK_TFLOPS"])
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in BF16_PEAK_TFLOPS if key in name), None)


def count_step_flops(cfg: Config, generator: torch.nn.Module, discriminator: torch.nn.Module | None,
                     dev: torch.device, *, amp: bool, fmt: torch.memory_format) -> int:
    """FLOPs of one :class:`TrainStep` at the config's batch and crop size (forward and backward of every network
    it runs), counted by PyTorch's ``FlopCounterMode`` while the trainer's own step runs once on copies of the
    networks (the run's weights, optimizers and random streams are untouched). The copy runs one sample and the
    count is scaled by the batch size: every operation the counter counts (convolutions, matrix products) is
    linear in the batch.
    """
    import copy

    from torch.utils.flop_counter import FlopCounterMode

    g = copy.deepcopy(generator)
    d = copy.deepcopy(discriminator) if discriminator is not None else None
    opt_g, opt_d = optimizers(cfg, g, d, dev)
    constant = lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0) if opt is not None else None  # noqa: E731
    step = TrainStep(g, d, opt_g, opt_d, constant(opt_g), constant(opt_d), cfg.train, amp=amp, fmt=fmt)
    shape = sample_shape(cfg.model, cfg.train.crop_size)
    target = (1, 1, *shape[1:])
    mr = torch.zeros(1, *shape, device=dev)
    ct, mask = torch.full(target, -1.0, device=dev), torch.ones(target, device=dev)
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []), \
            FlopCounterMode(display=False) as counter:
        step(mr, ct, mask)
    return int(counter.get_total_flops()) * cfg.train.batch_size


def _budget_horizon(done: int, elapsed: float, per_step: float, max_minutes: float, max_steps: int, world: int,
                    dev: torch.device) -> int:
    """The step at which a time budget ends, from the measured time per step (rank 0's value on every rank)."""
    horizon = min(max_steps, done + int(max(0.0, 60 * max_minutes - elapsed) / max(per_step, 1e-9)))
    if world > 1:
        value = torch.tensor([horizon], device=dev)
        dist.broadcast(value, src=0)
        horizon = int(value.item())
    return max(horizon, done + 1)


def _environment(device: torch.device, world: int) -> dict[str, Any]:
    import monai

    env = {"medtrans": medtrans.__version__, "torch": torch.__version__, "monai": monai.__version__,
           "python": platform.python_version(), "platform": platform.platform(), "device": str(device),
           "world_size": world, "cpu_threads": torch.get_num_threads()}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def train(
    prep: str | Path,
    out: str | Path,
    cfg: Config,
    *,
    stop_step: int | None = None,
    max_minutes: float | None = None,
    resume: bool = False,
    device: str = "auto",
    seed: int = 0,
    progress: bool = True,
    profile: str | None = None,
) -> dict[str, Any]:
    """Train a generator on a prepared dataset and write the run folder (see ``docs/cli.md``).

    Args:
        prep: the prepared dataset (``medtrans prepare`` output).
        out: the run folder.
        cfg: the resolved config. On resume it must equal the run's saved config except for
            :data:`RESUME_SAFE_KEYS` (anything else is refused, naming the keys).
        stop_step: stop after this global step (default: ``cfg.train.max_steps``).
        max_minutes: also stop (after a checkpoint) when this much wall time has passed.
        resume: continue from ``out/checkpoints/last.pt``.
        device: ``auto``, ``cpu`` or ``cuda``.
        seed: seeds the initial weights and the data stream.
        progress: show a progress bar.
        profile: how the config was chosen (e.g. the GPU profile picked for a CUDA device), for the record.

    Returns:
        A summary: final step, best validation metrics, bundle path, and the achieved throughput (TFLOP/s per
        device from :func:`count_step_flops`, and its fraction of the device's bf16 peak where known).
    """
    prep, out = Path(prep), Path(out)
    if stop_step is not None and stop_step < 1:
        raise MedtransError(f"--max-steps must be at least 1, not {stop_step}")
    if max_minutes is not None and not max_minutes > 0:
        raise MedtransError(f"--max-minutes must be positive, not {max_minutes}")
    claim_output_dir(out, kind="train", inputs=[prep], signatures=["checkpoints", "bundle/bundle.json"])
    rank, world, local = _dist()
    dev = pick_device(device)
    if dev.type == "cuda" and world > 1:
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    ckpt_path = checkpoint_file(out)
    state: dict[str, Any] | None = None
    if resume:
        if not ckpt_path.is_file():
            raise MedtransError(f"--resume: no checkpoint at {ckpt_path}")
        state = load_torch(ckpt_path, what="the run's last checkpoint")
        changed = [k for k in config_differences(cfg.to_dict(), _config_of(state, ckpt_path))
                   if k not in RESUME_SAFE_KEYS]
        if changed:
            raise ConfigError(f"--resume keeps the run's saved config, but these keys differ from it: "
                              f"{', '.join(changed)}; start a new run to change them (a resume may change only "
                              f"{', '.join(sorted(RESUME_SAFE_KEYS))})")
        seed = int(state["seed"])
    elif ckpt_path.exists():
        raise MedtransError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    if dev.type == "cpu":
        torch.use_deterministic_algorithms(True)

    manifest = load_manifest(prep)
    k = cfg.model.context_slices
    bank = load_bank(prep, manifest, "train", k).to(dev)
    val_cases = manifest["split"].get("val", [])
    three_d = cfg.model.spatial_dims == 3
    stream = BatchStream(bank, batch_size=cfg.train.batch_size, crop=cfg.train.crop_size, flip=cfg.train.flip,
                         seed=seed, rank=rank, world=world, bias_field=cfg.train.bias_field, plane=cfg.model.plane,
                         depth=cfg.model.patch_depth if three_d else 0)
    window = (cfg.model.patch_depth, cfg.train.crop_size, cfg.train.crop_size) if three_d else None
    # every case of a manifest was prepared with the manifest's config (a config change re-prepares all cases)
    prepared_with = load_config(None, base=manifest["config"]).prepare
    spec = MRNormalization.from_prepare(prepared_with)
    spacing = list(prepared_with.spacing) or None  # the working grid the slices were cut on

    torch.manual_seed(seed)
    gen = Generator(cfg.model).to(dev)
    use_gan = cfg.train.gan_weight > 0
    disc = Discriminator(cfg.model).to(dev) if use_gan else None
    fmt = (torch.channels_last if (cfg.train.channels_last and dev.type == "cuda" and not three_d)
           else torch.contiguous_format)
    gen = gen.to(memory_format=fmt)
    if disc is not None:
        disc = disc.to(memory_format=fmt)
    opt_g, opt_d = optimizers(cfg, gen, disc, dev)
    # the horizon is read at every step, so that a time budget can fix it once the step time is known
    schedule = {"horizon": cfg.train.max_steps, "fixed": max_minutes is None}
    if state is not None and "lr_horizon" in state:
        schedule.update(horizon=int(state["lr_horizon"]), fixed=bool(state["lr_horizon_fixed"]) or max_minutes is None)

    def factor(step: int) -> float:
        return _lr_factor(schedule["horizon"], cfg.train.decay_from)(step)

    sched_g = torch.optim.lr_scheduler.LambdaLR(opt_g, factor)
    sched_d = torch.optim.lr_scheduler.LambdaLR(opt_d, factor) if opt_d is not None else None
    start, best_mae, best_step = 0, float("inf"), -1
    if state is not None:
        gen.load_state_dict(state["generator"])
        opt_g.load_state_dict(state["opt_g"])
        sched_g.load_state_dict(state["sched_g"])
        if disc is not None:
            disc.load_state_dict(state["discriminator"])
            opt_d.load_state_dict(state["opt_d"])
            sched_d.load_state_dict(state["sched_d"])
        start, best_mae, best_step = int(state["step"]), float(state["best_mae"]), int(state["best_step"])
        torch.set_rng_state(state["torch_rng"])

    amp = cfg.train.amp and dev.type == "cuda"
    step_flops = count_step_flops(cfg, gen, disc, dev, amp=amp, fmt=fmt)
    peak = bf16_peak_tflops(dev)
    g_train, d_train = gen, disc
    if world > 1:
        ids = [dev.index] if dev.type == "cuda" else None
        g_train = torch.nn.parallel.DistributedDataParallel(gen, device_ids=ids)
        if disc is not None:
            d_train = torch.nn.parallel.DistributedDataParallel(disc, device_ids=ids)
    if cfg.train.compile:
        g_train = torch.compile(g_train)
        if d_train is not None:
            d_train = torch.compile(d_train)

    stop = min(stop_step if stop_step is not None else cfg.train.max_steps, cfg.train.max_steps)
    if stop <= start:
        raise MedtransError(f"nothing to train: the run is already at step {start} (asked to stop at {stop})",
                            path=out)
    is_main = rank == 0
    if is_main:
        (out / "checkpoints").mkdir(parents=True, exist_ok=True)
        write_text(out / "config.yaml", cfg.dump())
        write_json(out / "environment.json", {**_environment(dev, world), "profile": profile,
                                               "step_gflop": step_flops / 1e9, "bf16_peak_tflops": peak})
    predictor = Predictor(gen, spec, k, total_stride(cfg.model), dev, spacing=spacing, plane=cfg.model.plane,
                          window=window, overlap=cfg.model.sw_overlap)
    t_start = time.perf_counter()
    bar = tqdm(total=stop, initial=start, desc="train", unit="step", disable=not (progress and is_main))
    sums = torch.zeros(3, device=dev)
    n_acc, t_log, step, t_timed = 0, time.perf_counter(), start, time.perf_counter()
    t_aside = 0.0  # validation and checkpoint seconds since the last log: not training throughput
    trained = {"steps": 0, "seconds": 0.0}

    def checkpoint(step_done: int) -> None:
        save_torch(ckpt_path, {
            "step": step_done, "seed": seed, "best_mae": best_mae, "best_step": best_step,
            "lr_horizon": schedule["horizon"], "lr_horizon_fixed": schedule["fixed"],
            "config_json": json.dumps(cfg.to_dict()), "generator": gen.state_dict(), "opt_g": opt_g.state_dict(),
            "sched_g": sched_g.state_dict(), "torch_rng": torch.get_rng_state(),
            **({"discriminator": disc.state_dict(), "opt_d": opt_d.state_dict(), "sched_d": sched_d.state_dict()}
               if disc is not None else {}),
        })

    log_file = out / "metrics.jsonl"
    try:
        train_step = TrainStep(g_train, d_train, opt_g, opt_d, sched_g, sched_d, cfg.train, amp=amp, fmt=fmt)
        for step in range(start, stop):
            sums += train_step(*stream.batch(step))
            n_acc += 1
            done = step + 1
            if not schedule["fixed"]:
                if done - start == BUDGET_SKIP_STEPS:  # the first steps carry one-time costs: time the ones after
                    t_timed = time.perf_counter()
                elif done - start >= BUDGET_WARMUP_STEPS and (done - start) % BUDGET_WARMUP_STEPS == 0:
                    # estimated from the mean step time since the warm-up, again every BUDGET_WARMUP_STEPS steps
                    # while the rate is still constant (a new horizon changes no rate used so far); fixed once the
                    # decay begins, so that the decay runs to zero within the budget
                    now = time.perf_counter()
                    per_step = (now - t_timed) / (done - start - BUDGET_SKIP_STEPS)
                    horizon = _budget_horizon(done, now - t_start, per_step, max_minutes, cfg.train.max_steps,
                                              world, dev)
                    decaying = done >= int(horizon * cfg.train.decay_from)
                    schedule.update(horizon=horizon, fixed=decaying)
                    bar.total = min(stop, schedule["horizon"])  # what the budget allows, not train.max_steps
                    bar.refresh()
                    if is_main and decaying:
                        with open(log_file, "a") as fh:
                            fh.write(json.dumps({"step": done, "lr_horizon": schedule["horizon"]}) + "\n")
            # a budgeted run ends at its horizon (the rate is zero there); the clock stays a backstop
            timed_out = max_minutes is not None and ((time.perf_counter() - t_start) > 60 * max_minutes
                                                     or (schedule["fixed"] and done >= schedule["horizon"]))
            if world > 1 and max_minutes is not None:
                flag = torch.tensor([int(timed_out)], device=dev)
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                timed_out = bool(flag.item())
            last = done == stop or timed_out
            if done % LOG_EVERY == 0 or last:
                vals = (sums / n_acc).tolist()  # the only host sync, every LOG_EVERY steps
                elapsed = max(time.perf_counter() - t_log - t_aside, 1e-9)
                rate = n_acc * cfg.train.batch_size * world / elapsed
                tflops = step_flops * n_acc / elapsed / 1e12  # per device
                trained["steps"] += n_acc
                trained["seconds"] += elapsed
                rec = {"step": done, "g_loss": vals[0], "l1": vals[1], "d_loss": vals[2],
                       "lr": sched_g.get_last_lr()[0], "slices_per_s": rate, "tflops": tflops,
                       "mfu": tflops / peak if peak else None}
                if is_main:
                    with open(log_file, "a") as fh:
                        fh.write(json.dumps(rec) + "\n")
                    bar.set_postfix(l1=f"{vals[1]:.4f}", d=f"{vals[2]:.3f}", sps=f"{rate:.0f}",
                                    **({"mfu": f"{tflops / peak:.1%}"} if peak else {"TFLOPs": f"{tflops:.2f}"}))
                sums.zero_()
                n_acc, t_log, t_aside = 0, time.perf_counter(), 0.0
            t_side = time.perf_counter()
            if is_main and val_cases and (done % cfg.train.val_every == 0 or last):
                metrics = validate(predictor, prep, val_cases)
                with open(log_file, "a") as fh:
                    fh.write(json.dumps({"step": done, **{f"val_{k2}": v for k2, v in metrics.items()}}) + "\n")
                if metrics["mae"] < best_mae:
                    best_mae, best_step = metrics["mae"], done
                    save_torch(out / "checkpoints" / "best.pt", {"step": done, "generator": gen.state_dict()})
            if is_main and (done % cfg.train.checkpoint_every == 0 or last):
                checkpoint(done)
            t_aside += time.perf_counter() - t_side
            bar.update()
            if world > 1:
                dist.barrier()
            if timed_out:
                break
    except torch.cuda.OutOfMemoryError:
        raise MedtransError(
            f"out of GPU memory at train.batch_size={cfg.train.batch_size}; retry with "
            f"--set train.batch_size={max(1, cfg.train.batch_size // 2)} (the last checkpoint, if any, is kept)"
        ) from None
    finally:
        bar.close()
    if world > 1:
        # DDP keeps parameters identical; batch-norm running statistics are broadcast from rank 0 at each
        # forward, so after the last step every rank takes rank 0's (the ones rank 0 saves in the bundle)
        for buffer in gen.buffers():
            dist.broadcast(buffer, src=0)
    achieved = step_flops * trained["steps"] / max(trained["seconds"], 1e-9) / 1e12
    result = {"step": step + 1, "best_val_mae": best_mae if best_step >= 0 else None, "best_step": best_step,
              "throughput": {"step_gflop": step_flops / 1e9, "tflops_per_device": achieved,
                             "bf16_peak_tflops": peak, "mfu": achieved / peak if peak else None,
                             "slices_per_s": trained["steps"] * cfg.train.batch_size * world
                             / max(trained["seconds"], 1e-9)}}
    if is_main:
        best_file = out / "checkpoints" / "best.pt"
        weights = (load_torch(best_file, what="the best checkpoint")["generator"] if best_file.exists()
                   else gen.state_dict())
        # what the input checks of convert compare an MR with (medtrans.qa): the training MRs' profile
        profile = training_profile([mr_profile(sitk.ReadImage(str(prep / name / "mr.nii.gz")), spec)
                                    for name in manifest["split"]["train"]])
        bundle = save_bundle(out / "bundle", model=cfg.model, mr_normalization=spec, state_dict=weights,
                             spacing=spacing, info={
            "training_profile": profile, "window": list(window) if window else None, "seed": seed,
            "trained_steps": result["step"], "selected": "best validation MAE" if best_file.exists() else "last step",
            "best_val_mae_hu": best_mae if best_step >= 0 else None, "best_step": best_step,
            "dataset": str(prep.resolve()), "split": manifest["split"],
        })
        result["bundle"] = str(bundle)
        write_json(out / "summary.json", result)
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return result


def ensemble_members(cfg: Config, *, ensemble: int, planes: list[str] | None, seed: int) -> list[dict[str, Any]]:
    """The members of an ensemble run: ``ensemble`` seeds times the slice ``planes`` (default: the config's).

    Example:
        >>> [m["name"] for m in ensemble_members(load_config(None), ensemble=2, planes=None, seed=0)]
        ['member0_axial', 'member1_axial']
        >>> [m["plane"] for m in ensemble_members(load_config(None), ensemble=1, planes=["axial", "coronal"], seed=0)]
        ['axial', 'coronal']
    """
    if ensemble < 1:
        raise MedtransError(f"--ensemble must be at least 1, not {ensemble}")
    planes = planes or [cfg.model.plane]
    bad = [p for p in planes if p not in PLANE_AXES]
    if bad:
        raise MedtransError(f"--planes: unknown plane(s) {', '.join(bad)}; use axial, coronal, sagittal")
    if cfg.model.spatial_dims == 3 and planes != ["axial"]:
        raise MedtransError("--planes applies to slice models; a 3D model (model.spatial_dims=3) has no plane")
    return [{"name": f"member{i}_{plane}", "seed": seed + i, "plane": plane}
            for i in range(ensemble) for plane in planes]


def train_ensemble(prep: str | Path, out: str | Path, cfg: Config, *, ensemble: int = 1,
                   planes: list[str] | None = None, stop_step: int | None = None, max_minutes: float | None = None,
                   resume: bool = False, device: str = "auto", seed: int = 0, progress: bool = True,
                   profile: str | None = None) -> dict[str, Any]:
    """Train the members of an ensemble one after the other into ``out/<member>/`` (each a full run folder).

    Members differ in seed (weights and data order) and, with ``planes``, in slice plane (tri-planar 2.5D:
    ``["axial", "coronal", "sagittal"]``). A time budget is shared equally, so that an ensemble and a single
    model can be compared at equal wall time. ``convert --model OUT`` averages the members (equal weights) and
    ``--uncertainty`` includes their spread. With ``resume`` the run's own members and config (``ensemble.json``)
    are used: finished members are kept, an interrupted one resumes and the rest start.
    """
    prep, out = Path(prep), Path(out)
    record = out / ENSEMBLE_FILE
    if resume:  # the members are the run's own, whatever --ensemble/--planes say now
        if not record.is_file():
            raise MedtransError(f"--resume: {out} holds no ensemble run ({ENSEMBLE_FILE} missing)")
        try:
            saved = json.loads(record.read_text())
            members, cfg = saved["members"], load_config(None, base=saved["config"])
        except (OSError, json.JSONDecodeError, KeyError) as exc:
            raise MedtransError(f"{ENSEMBLE_FILE} cannot be read: {exc}", path=out) from None
    else:
        members = ensemble_members(cfg, ensemble=ensemble, planes=planes, seed=seed)
        claim_output_dir(out, kind="train-ensemble", inputs=[prep], signatures=[ENSEMBLE_FILE])
        if record.exists():
            raise MedtransError(f"{out} already holds an ensemble run; pass --resume to continue it")
        write_json(record, {"members": members, "planes": planes, "ensemble": ensemble,
                            "budget_minutes": max_minutes, "config": cfg.to_dict(), "profile": profile})
    share = max_minutes / len(members) if max_minutes is not None else None
    results = []
    for m in members:
        folder = out / m["name"]
        if (folder / "summary.json").is_file():
            results.append({"member": m["name"], **json.loads((folder / "summary.json").read_text())})
            continue
        member_cfg = load_config(None, base=cfg.to_dict(), overrides=[f"model.plane={m['plane']}"])
        result = train(prep, folder, member_cfg, stop_step=stop_step, max_minutes=share,
                       resume=resume and checkpoint_file(folder).is_file(), device=device, seed=m["seed"],
                       progress=progress, profile=profile)
        results.append({"member": m["name"], **result})
    summary = {"members": results, "bundle": None, "step": max(r["step"] for r in results),
               "best_val_mae": None}
    maes = [r["best_val_mae"] for r in results if r.get("best_val_mae") is not None]
    summary["best_val_mae"] = float(np.mean(maes)) if maes else None
    write_json(out / "summary.json", summary)
    return summary
