"""Ensembles, tri-planar runs and cross-validation: several members trained one after the other into one run folder.

Members differ in seed (weights and data order), with ``planes`` in slice plane (tri-planar 2.5D:
``["axial", "coronal", "sagittal"]``), and with ``folds`` in the cases they learn from: K-fold cross-validation over
the cases of the prepared dataset (nnU-Net style: every case not excluded by prepare's QA, whatever its split,
falls in one fold; fold ``i`` validates on its own cases and trains on the rest), after which each fold's model
converts its own held-out cases into ``RUN/oof/`` (out-of-fold sCTs: ``evaluate --pred RUN/oof --ref PREP --split
all`` scores the whole cohort). Each member is a complete run folder ``RUN/<member>/`` and ``RUN/ensemble.json``
records them (and the folds). ``convert --model RUN`` fuses the members (:class:`medtrans.inference.FusedPredictor`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medtrans.config import Config, load_config, with_legacy_defaults
from medtrans.errors import MedtransError
from medtrans.fsutil import write_json
from medtrans.modes import PatchMode, check_mode, slice_planes
from medtrans.output_dirs import claim_output_dir, releases_outputs
from medtrans.prepared import PreparedDataset
from medtrans.runs import ENSEMBLE_FILE, RunFolder
from medtrans.training import distributed
from medtrans.training.trainer import NothingToTrain, Trainer


def ensemble_members(cfg: Config, *, ensemble: int, planes: list[str] | None, seed: int) -> list[dict[str, Any]]:
    """The members of an ensemble run: ``ensemble`` seeds times the slice ``planes`` (default: the config's mode).

    Example:
        >>> [m["name"] for m in ensemble_members(load_config(None), ensemble=2, planes=None, seed=0)]
        ['member0_axial', 'member1_axial']
        >>> [m["plane"] for m in ensemble_members(load_config(None), ensemble=1, planes=["axial", "coronal"], seed=0)]
        ['axial', 'coronal']
        >>> [m["name"] for m in ensemble_members(load_config("multiplanar"), ensemble=2, planes=None, seed=0)]
        ['member0_multiplanar', 'member1_multiplanar']
    """
    if ensemble < 1:
        raise MedtransError(f"--ensemble must be at least 1, not {ensemble}")
    mode = check_mode(cfg)
    if planes is None:  # every member in the config's own mode (a multi-planar model's plane is "all")
        return [{"name": f"member{i}_{mode.name}", "seed": seed + i, "plane": cfg.model.plane}
                for i in range(ensemble)]
    known = slice_planes()
    bad = [p for p in planes if p not in known]
    if bad:
        raise MedtransError(f"--planes: unknown plane(s) {', '.join(bad)}; use {', '.join(known)}")
    if len(set(planes)) != len(planes):
        raise MedtransError(f"--planes {','.join(planes)} names a plane twice; each plane is one member")
    if isinstance(mode, PatchMode):
        raise MedtransError("--planes applies to slice models; a 3D model (model.spatial_dims=3) has no plane")
    return [{"name": f"member{i}_{plane}", "seed": seed + i, "plane": plane}
            for i in range(ensemble) for plane in planes]


#: Where a cross-validation's out-of-fold sCTs go, inside the run folder.
OUT_OF_FOLD = "oof"


def fold_members(dataset: PreparedDataset, cfg: Config, *, folds: int, seed: int) -> list[dict[str, Any]]:
    """K folds over the dataset's cases (train, val and test alike; prepare's excluded cases stay out), shuffled with
    ``seed``: each member's ``split`` validates on its fold and trains on the others.

    Raises:
        MedtransError: fewer than 2 folds, or fewer cases than folds.
    """
    cases = sorted({c for part in ("train", "val", "test") for c in dataset.split(part)})
    if folds < 2:
        raise MedtransError(f"--folds must be at least 2, not {folds}")
    if len(cases) < folds:
        raise MedtransError(f"--folds {folds}: the prepared dataset has only {len(cases)} case(s); each fold needs "
                            "one at least", path=dataset.root)
    order = [cases[i] for i in np.random.default_rng(seed).permutation(len(cases))]
    parts = [sorted(order[i::folds]) for i in range(folds)]
    return [{"name": f"fold{i}_{check_mode(cfg).name}", "seed": seed, "plane": cfg.model.plane, "fold": i,
             "split": {"train": sorted(c for j, p in enumerate(parts) if j != i for c in p), "val": parts[i],
                       "test": []}}
            for i in range(folds)]


def _open_record(run: RunFolder, prep: Path, cfg: Config, *, resume: bool, ensemble: int, planes: list[str] | None,
                 seed: int, max_minutes: float | None, profile: str | None, folds: int = 0,
                 ) -> tuple[list[dict[str, Any]], Config]:
    """The members and config of the run: from ``ensemble.json`` on resume, else new (written by rank 0 alone)."""
    ranks = distributed.ranks()
    if resume:  # the members are the run's own; --ensemble/--planes may not ask for others
        if not run.is_ensemble():
            raise MedtransError(f"--resume: {run.path} holds no ensemble run ({ENSEMBLE_FILE} missing)")
        record = run.ensemble_record()
        asked = (ensemble, planes, folds)
        if asked != (1, None, 0) and asked != (record.get("ensemble"), record.get("planes"), record.get("folds", 0)):
            raise MedtransError(f"--resume keeps the run's {len(record['members'])} member(s) "
                                f"({', '.join(m['name'] for m in record['members'])}); --ensemble/--planes/--folds cannot "
                                "change them: start a new run for other members", path=run.path)
        return record["members"], load_config(None, base=with_legacy_defaults(record["config"]))
    if folds and (ensemble > 1 or planes):
        raise MedtransError("--folds trains one model per fold; it does not combine with --ensemble or --planes")
    members = fold_members(PreparedDataset.open(prep), cfg, folds=folds, seed=seed) if folds else \
        ensemble_members(cfg, ensemble=ensemble, planes=planes, seed=seed)
    if ranks.is_main:
        claim_output_dir(run.path, kind="train-ensemble", inputs=[prep], signatures=[ENSEMBLE_FILE],
                         nonempty_option=False)
        if run.is_ensemble():
            raise MedtransError(f"{run.path} already holds an ensemble run; pass --resume to continue it")
        write_json(run.ensemble_file, {"members": members, "planes": planes, "ensemble": ensemble, "folds": folds,
                                       "budget_minutes": max_minutes, "config": cfg.to_dict(), "profile": profile})
    distributed.barrier()  # the other ranks start once rank 0 has written the record
    return members, cfg


def _finished(member: RunFolder, target: int) -> dict[str, Any] | None:
    """A member's summary when it has trained to ``target`` steps already (else None: it resumes or starts)."""
    summary = member.summary()
    return summary if summary is not None and int(summary.get("step", 0)) >= target else None


@releases_outputs
def train_ensemble(prep: str | Path, out: str | Path, cfg: Config, *, ensemble: int = 1,
                   planes: list[str] | None = None, stop_step: int | None = None, max_minutes: float | None = None,
                   resume: bool = False, device: str = "auto", seed: int = 0, progress: bool = True,
                   profile: str | None = None, folds: int = 0) -> dict[str, Any]:
    """Train the members of an ensemble one after the other into ``out/<member>/`` (each a full run folder).

    A time budget is shared equally, so that an ensemble and a single model can be compared at equal wall time. With
    ``resume`` the run's own members and config (``ensemble.json``) are used: a member that reached the step asked
    for is kept, any other resumes (or starts), so ``--resume --max-steps`` beyond the first stop trains every member
    on. Under ``torchrun`` rank 0 alone writes the run's records.
    """
    prep, run = Path(prep), RunFolder(out)
    members, cfg = _open_record(run, prep, cfg, resume=resume, ensemble=ensemble, planes=planes, seed=seed,
                                max_minutes=max_minutes, profile=profile, folds=folds)
    share = max_minutes / len(members) if max_minutes is not None else None
    target = min(stop_step or cfg.train.max_steps, cfg.train.max_steps)
    results = []
    for m in members:
        folder = run.member(m["name"])
        result = _finished(folder, target)
        if result is None:
            member_cfg = load_config(None, base=cfg.to_dict(), overrides=[f"model.plane={m['plane']}"])
            try:
                result = Trainer(prep, folder.path, member_cfg, stop_step=stop_step, max_minutes=share,
                                 resume=resume and folder.checkpoint.is_file(), device=device, seed=m["seed"],
                                 progress=progress, profile=profile, leave_group=False, split=m.get("split")).run()
            except NothingToTrain:  # its budgeted schedule has ended: it is finished
                result = folder.summary() or {"step": target, "best_val_mae": None}
        results.append({"member": m["name"], **result})
    maes = [r["best_val_mae"] for r in results if r.get("best_val_mae") is not None]
    summary = {"members": results, "bundle": None, "step": max(r["step"] for r in results),
               "best_val_mae": float(np.mean(maes)) if maes else None}
    if distributed.ranks().is_main and any("fold" in m for m in members):
        summary["out_of_fold"] = write_out_of_fold(run, prep, members, device=device, progress=progress)
    if distributed.ranks().is_main:
        write_json(run.summary_file, summary)
    distributed.finish()
    return summary


def write_out_of_fold(run: RunFolder, prep: Path, members: list[dict[str, Any]], *, device: str,
                      progress: bool) -> dict[str, Any]:
    """Each fold's model converts its own held-out cases into ``RUN/oof/`` (with the error map), so that every case
    has an sCT from a model that never saw it. Cases already converted by the same model are kept (a resumed run
    converts only what is missing); a case that fails is reported and the others go on."""
    from medtrans.convert import convert_cohort

    results = []
    for m in members:
        results += convert_cohort(run.member(m["name"]).path, prep, run.path / OUT_OF_FOLD, device=device,
                                  progress=progress, uncertainty=True, cases=m["split"]["val"])
    failed = [r for r in results if r["status"] == "failed"]
    return {"folder": str(run.path / OUT_OF_FOLD), "cases": len(results), "failed": failed}
