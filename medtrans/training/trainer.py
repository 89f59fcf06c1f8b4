"""The trainer: MONAI UNet generator with a masked L1 loss (the default), plus a PatchGAN term when
``train.gan_weight > 0`` (pix2pix: GAN loss + lambda * L1, ``--config pix2pix``); exact resume, DDP.

:class:`Trainer` is a short loop over small hooks (:meth:`~Trainer.start`, :meth:`~Trainer.step`,
:meth:`~Trainer.log`, :meth:`~Trainer.validate`, :meth:`~Trainer.checkpoint`, :meth:`~Trainer.end`); its parts live
in their own modules: the step (:mod:`.step`), the learning-rate schedule and time budget (:mod:`.budget`),
checkpoints and resume (:mod:`.checkpoint`), FLOP counting and MFU (:mod:`.profiling`), validation
(:mod:`.validation`), the bundle (:mod:`.export`), ensembles (:mod:`.ensemble`) and the process group
(:mod:`.distributed`). The model's mode (:mod:`medtrans.modes`) cuts the batches and predicts for validation.

``train.max_steps`` in the config is the schedule's horizon (the learning rate decays to zero there); ``--max-steps``
on the command line only says where this invocation stops, so that 8 steps followed by ``--resume --max-steps 16``
equals 16 steps straight, bit for bit on CPU.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from tqdm import tqdm

from medtrans.config import Config, load_config
from medtrans.errors import MedtransError
from medtrans.fsutil import load_torch, save_torch, write_json, write_text
from medtrans.inference import Predictor, pick_device
from medtrans.intensity import MRNormalization
from medtrans.models import Discriminator, Generator
from medtrans.modes import check_mode
from medtrans.output_dirs import claim_output_dir, releases_outputs
from medtrans.prepared import PreparedDataset
from medtrans.runs import RunFolder
from medtrans.training import distributed
from medtrans.training.budget import Schedule
from medtrans.training.checkpoint import checkpoint_file, resume_state, save_checkpoint, saved_config
from medtrans.training.data import BatchStream, load_bank
from medtrans.training.export import export_bundle
from medtrans.training.profiling import bf16_peak_tflops, count_step_flops, environment
from medtrans.training.step import TrainStep, optimizers
from medtrans.training.validation import fit_error_calibration, validate

__all__ = ["LOG_EVERY", "NothingToTrain", "Trainer", "checkpoint_file", "saved_config", "train"]

LOG_EVERY = 10


class NothingToTrain(MedtransError):
    """The run is already at (or past) the step it was asked to train to."""


@dataclass
class _Meter:
    """Losses summed on the device between log lines, and the wall time they took (validation excluded)."""

    sums: torch.Tensor
    count: int = 0
    t_log: float = field(default_factory=time.perf_counter)
    aside: float = 0.0
    steps: int = 0
    seconds: float = 0.0


class Trainer:
    """One training run into a run folder (see ``docs/cli.md``); ``run()`` trains and returns its summary.

    Args:
        prep: the prepared dataset (``medtrans prepare`` output).
        out: the run folder.
        cfg: the resolved config. On resume it must equal the run's saved config except for the keys in
            :data:`medtrans.training.checkpoint.RESUME_SAFE_KEYS`, and the dataset must normalize the MR and work at
            the spacing the weights were trained with.
        stop_step: stop after this global step (default: ``cfg.train.max_steps``; a budgeted schedule that has ended
            stops at its horizon).
        max_minutes: a time budget: the schedule's horizon follows it (:mod:`.budget`).
        resume: continue from ``out/checkpoints/last.pt``.
        device: ``auto``, ``cpu`` or ``cuda``.
        seed: seeds the initial weights and the data stream.
        progress: show a progress bar.
        profile: how the config was chosen (e.g. the GPU profile picked for a CUDA device), for the record.
        leave_group: leave the process group at the end (False when an ensemble trains several members).
        split: train on these ``train`` cases and validate on these ``val`` cases instead of the manifest's split
            (a fold of a cross-validation; recorded in the bundle).
    """

    def __init__(self, prep: str | Path, out: str | Path, cfg: Config, *, stop_step: int | None = None,
                 max_minutes: float | None = None, resume: bool = False, device: str = "auto", seed: int = 0,
                 progress: bool = True, profile: str | None = None, leave_group: bool = True,
                 split: dict[str, list[str]] | None = None) -> None:
        if stop_step is not None and stop_step < 1:
            raise MedtransError(f"--max-steps must be at least 1, not {stop_step}")
        if max_minutes is not None and not max_minutes > 0:
            raise MedtransError(f"--max-minutes must be positive, not {max_minutes}")
        self.mode = check_mode(cfg)
        self.prep, self.run_folder, self.cfg = Path(prep), RunFolder(out), cfg
        self.stop_step, self.max_minutes, self.resume, self.seed = stop_step, max_minutes, resume, seed
        self.progress, self.profile, self.leave_group = progress, profile, leave_group
        self.device_name = device
        self.split = split

    # ------------------------------------------------------------------------------------------- the loop

    @releases_outputs
    def run(self) -> dict[str, Any]:
        """Train from the start (or the checkpoint) to the stop step or the end of the budget; the summary."""
        self.start()
        try:
            for step in range(self.start_step, self.stop):
                done = step + 1
                self.step(step)
                if self.schedule.observe(done, world=self.ranks.world, device=self.dev):
                    self.on_decay(done)
                last = done == self.stop or self.schedule.timed_out(done, world=self.ranks.world, device=self.dev)
                self.log(done, last)
                t_side = time.perf_counter()
                self.validate(done, last)
                self.checkpoint(done, last)
                self.meter.aside += time.perf_counter() - t_side
                self.bar.update()
                distributed.barrier()
                if last:
                    break
        except torch.cuda.OutOfMemoryError:
            raise MedtransError(
                f"out of GPU memory at train.batch_size={self.cfg.train.batch_size}; retry with "
                f"--set train.batch_size={max(1, self.cfg.train.batch_size // 2)} (the last checkpoint, if any, "
                "is kept)") from None
        finally:
            if hasattr(self, "bar"):
                self.bar.close()
        return self.end(done)

    # ------------------------------------------------------------------------------------------- the hooks

    def start(self) -> None:
        """Claim the run folder, load the data and the checkpoint, build networks, optimizers and the schedule."""
        run, cfg = self.run_folder, self.cfg
        self.ranks = distributed.ranks()
        if self.ranks.is_main:  # one writer: the other ranks of a torchrun group write nothing into the folder
            claim_output_dir(run.path, kind="train", inputs=[self.prep],
                             signatures=["checkpoints", "bundle/bundle.json"], nonempty_option=False)
        distributed.barrier()
        self.dev = pick_device(self.device_name)
        if self.dev.type == "cuda" and self.ranks.world > 1:
            self.dev = torch.device("cuda", self.ranks.local)
            torch.cuda.set_device(self.dev)
        self.dataset = PreparedDataset.open(self.prep)
        if self.split is not None:  # a fold: the same dataset seen through another split
            self.dataset = PreparedDataset(self.prep, {**self.dataset.manifest, "split": self.split})
        prepared_with = load_config(None, base=self.dataset.config).prepare  # one config for every case
        self.spec = MRNormalization.from_prepare(prepared_with)
        self.spacing = list(prepared_with.spacing) or None  # the working grid the slices were cut on
        self.trained_on = {"path": str(self.prep.resolve()), "normalization": self.spec.to_dict(),
                           "spacing": self.spacing}
        state = self._load_state()
        if cfg.train.threads > 0:
            torch.set_num_threads(cfg.train.threads)
        if self.dev.type == "cpu":
            torch.use_deterministic_algorithms(True)
        self._build_data()
        self._build_networks(state)
        self._begin()

    def _load_state(self) -> dict[str, Any] | None:
        if self.resume:
            state = resume_state(self.run_folder, self.cfg, self.trained_on)
            self.seed = int(state["seed"])
            return state
        if self.run_folder.checkpoint.exists():
            raise MedtransError(f"{self.run_folder.path} already holds a run; pass --resume to continue it or choose "
                                "another --out")
        return None

    def _build_data(self) -> None:
        cfg = self.cfg
        bank = load_bank(self.prep, self.dataset.manifest, "train", cfg.model.context_slices).to(self.dev)
        self.val_cases = self.dataset.split("val")
        self.window = self.mode.window(cfg)
        self.stream = BatchStream(bank, batch_size=cfg.train.batch_size, crop=cfg.train.crop_size,
                                  flip=cfg.train.flip, seed=self.seed, rank=self.ranks.rank, world=self.ranks.world,
                                  bias_field=cfg.train.bias_field, plane=cfg.model.plane,
                                  depth=cfg.model.patch_depth if self.window else 0)

    def _build_networks(self, state: dict[str, Any] | None) -> None:
        cfg, dev = self.cfg, self.dev
        torch.manual_seed(self.seed)
        self.gen = Generator(cfg.model).to(dev)
        self.disc = Discriminator(cfg.model).to(dev) if cfg.train.gan_weight > 0 else None
        self.fmt = (torch.channels_last if (cfg.train.channels_last and dev.type == "cuda" and self.window is None)
                    else torch.contiguous_format)
        self.gen = self.gen.to(memory_format=self.fmt)
        if self.disc is not None:
            self.disc = self.disc.to(memory_format=self.fmt)
        self.opt_g, self.opt_d = optimizers(cfg, self.gen, self.disc, dev)
        self.schedule = Schedule(max_steps=cfg.train.max_steps, decay_from=cfg.train.decay_from,
                                 max_minutes=self.max_minutes, state=state)

        def factor(step: int) -> float:  # a plain function: LambdaLR keeps no state of it in the checkpoint
            return self.schedule.factor(step)

        self.sched_g = torch.optim.lr_scheduler.LambdaLR(self.opt_g, factor)
        self.sched_d = torch.optim.lr_scheduler.LambdaLR(self.opt_d, factor) if self.opt_d is not None else None
        self.start_step, self.best = 0, (float("inf"), -1)
        if state is not None:
            self._restore(state)

    def _restore(self, state: dict[str, Any]) -> None:
        for name, obj in self._stateful().items():
            obj.load_state_dict(state[name])
        self.start_step, self.best = int(state["step"]), (float(state["best_mae"]), int(state["best_step"]))
        torch.set_rng_state(state["torch_rng"])

    def _stateful(self) -> dict[str, Any]:
        nets = {"generator": self.gen, "opt_g": self.opt_g, "sched_g": self.sched_g}
        if self.disc is not None:
            nets.update(discriminator=self.disc, opt_d=self.opt_d, sched_d=self.sched_d)
        return nets

    def _begin(self) -> None:
        """FLOPs per step, DDP and compile wrappers, the stop step, the run's records, the progress bar."""
        cfg, dev, world = self.cfg, self.dev, self.ranks.world
        amp = cfg.train.amp and dev.type == "cuda"
        self.step_flops = count_step_flops(cfg, self.gen, self.disc, dev, amp=amp, fmt=self.fmt)
        self.peak = bf16_peak_tflops(dev)
        g_train, d_train = self.gen, self.disc
        if world > 1:
            ids = [dev.index] if dev.type == "cuda" else None
            g_train = torch.nn.parallel.DistributedDataParallel(self.gen, device_ids=ids)
            if self.disc is not None:
                d_train = torch.nn.parallel.DistributedDataParallel(self.disc, device_ids=ids)
        if cfg.train.compile:
            g_train = torch.compile(g_train)
            d_train = torch.compile(d_train) if d_train is not None else None
        self.train_step = TrainStep(g_train, d_train, self.opt_g, self.opt_d, self.sched_g, self.sched_d, cfg.train,
                                    amp=amp, fmt=self.fmt)
        self.stop = self._stop_step()
        if self.ranks.is_main:
            (self.run_folder.path / "checkpoints").mkdir(parents=True, exist_ok=True)
            write_text(self.run_folder.config_file, cfg.dump())
            write_json(self.run_folder.environment_file, {**environment(dev, world), "profile": self.profile,
                                                          "step_gflop": self.step_flops / 1e9,
                                                          "bf16_peak_tflops": self.peak})
        self.predictor = Predictor(self.gen, self.spec, cfg.model.context_slices, cfg.model.total_stride, dev,
                                   spacing=self.spacing, plane=cfg.model.plane, window=self.window,
                                   overlap=cfg.model.sw_overlap)
        self.meter = _Meter(torch.zeros(3, device=dev))
        self.schedule.begin(self.start_step)
        self.bar = tqdm(total=self.stop, initial=self.start_step, desc="train", unit="step",
                        disable=not (self.progress and self.ranks.is_main))

    def _stop_step(self) -> int:
        asked = min(self.stop_step if self.stop_step is not None else self.cfg.train.max_steps,
                    self.cfg.train.max_steps)
        stop = self.schedule.stop_at(asked)
        if stop <= self.start_step:
            why = (f"its budgeted schedule ended at step {self.schedule.horizon} (the learning rate is zero there)"
                   if stop < asked else f"asked to stop at {stop}")
            raise NothingToTrain(f"nothing to train: the run is already at step {self.start_step} ({why})",
                                 path=self.run_folder.path)
        return stop

    def step(self, step: int) -> None:
        """One optimization step (the losses stay on the device until the next log line)."""
        self.meter.sums += self.train_step(*self.stream.batch(step))
        self.meter.count += 1

    def on_decay(self, done: int) -> None:
        """The budget's horizon was fixed (the decay begins): the progress bar and the log say where it ends."""
        self.bar.total = min(self.stop, self.schedule.horizon)  # what the budget allows, not train.max_steps
        self.bar.refresh()
        if self.ranks.is_main:
            self.run_folder.append_log({"step": done, "lr_horizon": self.schedule.horizon})

    def log(self, done: int, last: bool) -> None:
        """Every :data:`LOG_EVERY` steps: mean losses, throughput, TFLOP/s and MFU (the only host sync)."""
        m = self.meter
        if not (done % LOG_EVERY == 0 or last):
            return
        vals = (m.sums / m.count).tolist()
        elapsed = max(time.perf_counter() - m.t_log - m.aside, 1e-9)
        rate = m.count * self.cfg.train.batch_size * self.ranks.world / elapsed
        tflops = self.step_flops * m.count / elapsed / 1e12  # per device
        m.steps, m.seconds = m.steps + m.count, m.seconds + elapsed
        if self.ranks.is_main:
            self.run_folder.append_log({"step": done, "g_loss": vals[0], "l1": vals[1], "d_loss": vals[2],
                                        "lr": self.sched_g.get_last_lr()[0], "slices_per_s": rate, "tflops": tflops,
                                        "mfu": tflops / self.peak if self.peak else None})
            self.bar.set_postfix(l1=f"{vals[1]:.4f}", d=f"{vals[2]:.3f}", sps=f"{rate:.0f}",
                                 **({"mfu": f"{tflops / self.peak:.1%}"} if self.peak
                                    else {"TFLOPs": f"{tflops:.2f}"}))
        m.sums.zero_()
        m.count, m.t_log, m.aside = 0, time.perf_counter(), 0.0

    def validate(self, done: int, last: bool) -> None:
        """Every ``train.val_every`` steps: whole validation volumes; the best weights are kept."""
        if not (self.ranks.is_main and self.val_cases and (done % self.cfg.train.val_every == 0 or last)):
            return
        metrics = validate(self.predictor, self.dataset, self.val_cases)
        self.run_folder.append_log({"step": done, **{f"val_{k}": v for k, v in metrics.items()}})
        if metrics["mae"] < self.best[0]:
            self.best = (metrics["mae"], done)
            save_torch(self.run_folder.best_checkpoint, {"step": done, "generator": self.gen.state_dict()})

    def checkpoint(self, done: int, last: bool) -> None:
        """Every ``train.checkpoint_every`` steps and at the end: what ``--resume`` continues from."""
        if self.ranks.is_main and (done % self.cfg.train.checkpoint_every == 0 or last):
            save_checkpoint(self.run_folder, step=done, seed=self.seed, best=self.best,
                            schedule=self.schedule.state(), cfg=self.cfg, dataset=self.trained_on,
                            nets=self._stateful())

    def _calibrate_error(self) -> dict[str, Any] | None:
        """The error output's calibration on the validation cases, with the weights the bundle gets (the run is
        over: the generator may take the best weights now; the last checkpoint is written already)."""
        if not (self.cfg.model.predict_error and self.val_cases):
            return None
        best = self.run_folder.best_checkpoint
        if best.exists():
            self.gen.load_state_dict(load_torch(best, what="the best checkpoint")["generator"])
        return fit_error_calibration(self.predictor, self.dataset, self.val_cases, seed=self.seed)

    def end(self, done: int) -> dict[str, Any]:
        """Ranks agree on batch-norm statistics; rank 0 writes the bundle and the summary."""
        if self.ranks.world > 1:
            # DDP keeps parameters identical; batch-norm running statistics are broadcast from rank 0 at each
            # forward, so after the last step every rank takes rank 0's (the ones rank 0 saves in the bundle)
            for buffer in self.gen.buffers():
                dist.broadcast(buffer, src=0)
        m, best_mae, best_step = self.meter, *self.best
        achieved = self.step_flops * m.steps / max(m.seconds, 1e-9) / 1e12
        result = {"step": done, "best_val_mae": best_mae if best_step >= 0 else None, "best_step": best_step,
                  "throughput": {"step_gflop": self.step_flops / 1e9, "tflops_per_device": achieved,
                                 "bf16_peak_tflops": self.peak, "mfu": achieved / self.peak if self.peak else None,
                                 "slices_per_s": m.steps * self.cfg.train.batch_size * self.ranks.world
                                 / max(m.seconds, 1e-9)}}
        if self.ranks.is_main:
            bundle = export_bundle(self.run_folder, self.dataset, self.cfg, spec=self.spec, spacing=self.spacing,
                                   window=self.window, generator=self.gen, seed=self.seed, result=result,
                                   error_calibration=self._calibrate_error())
            result["bundle"] = str(bundle)
            write_json(self.run_folder.summary_file, result)
        distributed.barrier()
        if self.leave_group:
            distributed.finish()
        return result


def train(prep: str | Path, out: str | Path, cfg: Config, *, stop_step: int | None = None,
          max_minutes: float | None = None, resume: bool = False, device: str = "auto", seed: int = 0,
          progress: bool = True, profile: str | None = None) -> dict[str, Any]:
    """Train a generator on a prepared dataset and write the run folder (:class:`Trainer`; see ``docs/cli.md``).

    Returns:
        A summary: final step, best validation metrics, bundle path, and the achieved throughput (TFLOP/s per
        device from :func:`medtrans.training.profiling.count_step_flops`, and its fraction of the device's bf16 peak
        where known).
    """
    return Trainer(prep, out, cfg, stop_step=stop_step, max_minutes=max_minutes, resume=resume, device=device,
                   seed=seed, progress=progress, profile=profile).run()
