"""The ``medtrans`` command line: one subcommand per stage.

Errors that a user can cause print one line (``medtrans: error: <file>: <problem>``) and exit with
status 2; ``--debug`` shows the traceback instead. A batch command (prepare, convert, evaluate) that
finished but could not process some cases exits with status 1 after reporting each of them.
"""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from medtrans.errors import MedtransError
from medtrans.formats import SCT_OUTPUTS

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="MRI -> synthetic CT: info, phantom, prepare, train, convert, evaluate, demo.")
_state = {"debug": False}


class PhantomFormat(str, Enum):
    nifti = "nifti"
    mha = "mha"
    dicom = "dicom"


OutFormat = Enum("OutFormat", {name: name for name in SCT_OUTPUTS}, type=str)  # type: ignore[misc]


class Protocol(str, Enum):
    synthrad2023 = "synthrad2023"
    synthrad2025 = "synthrad2025"


class Split(str, Enum):
    test = "test"
    val = "val"
    train = "train"
    all = "all"


ConfigOpt = Annotated[Optional[str], typer.Option("--config", help="A shipped config's name (default, demo, pix2pix, 2d, 3d, multiplanar, gpu; the list: docs/config.md) or a path to a YAML file.")]  # noqa: UP045
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="Override a config key: section.key=value.")]  # noqa: UP045
MrSeriesOpt = Annotated[Optional[str], typer.Option("--mr-series", help="Which MR DICOM series per case: a regular expression on SeriesDescription/ProtocolName, or a SeriesInstanceUID (default: the only one that is not a localizer or derived).")]  # noqa: UP045
CtSeriesOpt = Annotated[Optional[str], typer.Option("--ct-series", help="Which CT DICOM series per case (as --mr-series).")]  # noqa: UP045
NonEmptyOpt = Annotated[bool, typer.Option("--allow-nonempty-out", help="Write into an --out folder that holds other files (refused by default).")]


@app.callback()
def _main(debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False) -> None:
    _state["debug"] = debug


@app.command()
def info(
    path: Annotated[Path, typer.Argument(help="A volume file or a DICOM series folder.")],
    series_uid: Annotated[Optional[str], typer.Option(help="SeriesInstanceUID in a multi-series folder.")] = None,  # noqa: UP045
    modality: Annotated[Optional[str], typer.Option(help="Modality to pick in a multi-series folder.")] = None,  # noqa: UP045
) -> None:
    """Print a volume's geometry, modality, dtype and value range as JSON."""
    from medtrans.io import read_volume, volume_info

    typer.echo(json.dumps(volume_info(read_volume(path, series_uid=series_uid, modality=modality)), indent=2))


@app.command()
def phantom(
    out: Annotated[Path, typer.Option(help="Output cohort folder.")],
    cases: Annotated[int, typer.Option(min=1, help="Number of subjects.")] = 4,
    seed: Annotated[int, typer.Option(help="Cohort seed.")] = 0,
    format: Annotated[PhantomFormat, typer.Option("--format", help="File format.")] = PhantomFormat.nifti,
    aligned: Annotated[bool, typer.Option(help="SynthRAD layout: mr, ct, mask on one grid.")] = False,
) -> None:
    """Write deterministic synthetic paired MR/CT head subjects."""
    from medtrans.phantom import make_cohort

    folders = make_cohort(out, cases=cases, seed=seed, aligned=aligned, fmt=format.value)
    typer.echo(f"wrote {len(folders)} synthetic phantom case(s) to {out}")


@app.command()
def prepare(
    input: Annotated[Path, typer.Option("--input", help="Cohort folder (or one case folder).")],
    out: Annotated[Path, typer.Option(help="Prepared dataset folder.")],
    config: ConfigOpt = None,
    set_: SetOpt = None,
    workers: Annotated[int, typer.Option(min=0, help="Parallel case processes; 0 = one per CPU core.")] = 0,
    mr_series: MrSeriesOpt = None,
    ct_series: CtSeriesOpt = None,
    allow_nonempty_out: NonEmptyOpt = False,
) -> None:
    """Register, mask, normalize and slice a cohort into a paired training dataset."""
    from medtrans.config import load_config
    from medtrans.data_prep.pipeline import prepare_cohort, summary_table

    cfg = load_config(config, overrides=set_)
    manifest = prepare_cohort(input, out, cfg, workers=workers, allow_nonempty=allow_nonempty_out,
                              mr_series=mr_series, ct_series=ct_series)
    typer.echo(summary_table(manifest))
    typer.echo(f"manifest: {out / 'manifest.json'}")
    if manifest["failed"]:
        typer.echo(f"{len(manifest['failed'])} case(s) failed; see the table above", err=True)
        raise typer.Exit(1)


@app.command()
def train(
    data: Annotated[Path, typer.Option(help="Prepared dataset folder.")],
    out: Annotated[Path, typer.Option(help="Run folder.")],
    config: ConfigOpt = None,
    set_: SetOpt = None,
    max_steps: Annotated[Optional[int], typer.Option(min=1, help="Stop after this global step (the LR schedule's horizon stays train.max_steps).")] = None,  # noqa: UP045
    max_minutes: Annotated[Optional[float], typer.Option(min=0.01, help="Stop (with a checkpoint) after this many minutes.")] = None,  # noqa: UP045
    resume: Annotated[bool, typer.Option(help="Continue from RUN/checkpoints/last.pt with the run's saved config (--config/--set may change only bookkeeping keys).")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    seed: Annotated[int, typer.Option(help="Seed of the weights and the data stream.")] = 0,
    ensemble: Annotated[int, typer.Option(min=1, help="Train this many members (seeds seed..seed+K-1) into one run folder; convert averages them.")] = 1,
    planes: Annotated[Optional[str], typer.Option(help="Slice planes of the members, e.g. axial,coronal,sagittal (tri-planar 2.5D, fused by convert).")] = None,  # noqa: UP045
    folds: Annotated[int, typer.Option(min=0, help="K-fold cross-validation over the prepared cases: one model per fold, out-of-fold sCTs in RUN/oof for every case; convert fuses the fold models.")] = 0,
) -> None:
    """Train the MONAI U-Net generator (L1; --config pix2pix adds the PatchGAN; --config 3d a 3D patch model).
    Several GPUs: torchrun. --ensemble/--planes train several members; a time budget is shared among them."""
    from medtrans.config import choose_profile, load_config
    from medtrans.modes import check_mode
    from medtrans.runs import RunFolder
    from medtrans.training.checkpoint import saved_config
    from medtrans.training.ensemble import train_ensemble
    from medtrans.training.trainer import train as run

    # on resume, --config/--set apply on top of the run's saved config; the trainer refuses real changes
    base = saved_config(out) if resume and RunFolder(out).checkpoint.is_file() else None
    config, profile = choose_profile(config, resume=resume, device=device)
    if profile:
        typer.echo(profile)
    cfg = load_config(config, overrides=set_, base=base)
    check_mode(cfg)  # a model the modes cannot train fails here, before any work
    if ensemble > 1 or planes or folds or RunFolder(out).is_ensemble():
        plane_list = [p.strip() for p in planes.split(",") if p.strip()] if planes else None
        summary = train_ensemble(data, out, cfg, ensemble=ensemble, planes=plane_list, stop_step=max_steps,
                                 max_minutes=max_minutes, resume=resume, device=device, seed=seed, profile=profile,
                                 folds=folds)
        typer.echo(f"{len(summary['members'])} members: " + ", ".join(
            f"{m['member']} (step {m['step']})" for m in summary["members"]) + f"; convert --model {out}")
        oof = summary.get("out_of_fold")
        if oof:
            typer.echo(f"out-of-fold sCTs of {oof['cases']} case(s) in {oof['folder']}: evaluate --pred "
                       f"{oof['folder']} --ref {data} --split all")
            for r in oof["failed"]:
                typer.echo(f"  out-of-fold sCT failed: {r['case']}: {r['error']}", err=True)
        return
    result = run(data, out, cfg, stop_step=max_steps, max_minutes=max_minutes, resume=resume, device=device,
                 seed=seed, profile=profile)
    if "bundle" in result:
        best = result["best_val_mae"]
        val = f"best validation MAE {best:.1f} HU" if best is not None else "no validation cases (last step kept)"
        typer.echo(f"step {result['step']}; {val}; bundle: {result['bundle']}")


@app.command()
def convert(
    model: Annotated[list[Path], typer.Option(help="Training run folder or model bundle; repeat it for an ensemble (sCTs averaged).")],
    input: Annotated[Path, typer.Option("--input", help="MR file, DICOM series, case folder or cohort.")],
    out: Annotated[Path, typer.Option(help="Output folder.")],
    format: Annotated[OutFormat, typer.Option("--format", help="Output format.")] = OutFormat.nifti,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    batch_size: Annotated[int, typer.Option(min=0, help="Slices per forward pass (0 = auto: 2 on CPU, 32 on CUDA).")] = 0,
    shard: Annotated[Optional[str], typer.Option(help="i/n: convert every n-th case from i (job arrays).")] = None,  # noqa: UP045
    overwrite: Annotated[bool, typer.Option(help="Redo every case, also those already up to date.")] = False,
    tta: Annotated[bool, typer.Option(help="Average with the left-right flipped prediction.")] = False,
    mr_series: MrSeriesOpt = None,
    uncertainty: Annotated[bool, typer.Option(help="Also write the expected |sCT - CT| per voxel (HU, calibrated on held-out cases; docs/trust.md) and each case's predicted MAE.")] = False,
    strict: Annotated[bool, typer.Option(help="Fail cases with any warning flag (an MR unlike the training MRs).")] = False,
    allow_nonempty_out: NonEmptyOpt = False,
) -> None:
    """Convert MR volumes into synthetic CT on each MR's exact grid (reruns redo only what is stale)."""
    from medtrans.convert import convert_cohort
    from medtrans.qa import Flag, flags_text

    results = convert_cohort(model, input, out, fmt=format.value, device=device, batch_size=batch_size, shard=shard,
                             overwrite=overwrite, tta=tta, allow_nonempty=allow_nonempty_out, mr_series=mr_series,
                             uncertainty=uncertainty, strict=strict)
    for r in results:
        if r["status"] == "failed":
            note = r["error"]
        elif r["status"] in ("skipped", "orphaned"):
            note = r["reason"]
        else:
            note = f"{r['timings_s']['total']:.1f}s" + ("" if r["reason"] == "new" else f"  redone: {r['reason']}")
            unc = r.get("uncertainty")
            if unc and unc.get("predicted_mae_hu") is not None:
                note += f"  predicted MAE {unc['predicted_mae_hu']:.0f} HU" + ("" if unc["calibrated"] else
                                                                             " (uncalibrated)")
            elif unc:
                note += f"  uncertainty {unc['mean_in_body_hu']:.0f} HU"
            if r.get("flags"):
                note += "  " + flags_text([Flag.from_dict(f) for f in r["flags"]])
        typer.echo(f"{r['case']:<28} {r['status']:<8} {note}")
    failed = [r for r in results if r["status"] == "failed"]
    done = sum(r["status"] in ("ok", "skipped") for r in results)
    typer.echo(f"{done} converted or skipped, {len(failed)} failed -> {out}")
    if failed:
        raise typer.Exit(1)


@app.command()
def evaluate(
    pred: Annotated[list[str], typer.Option(help="convert's output folder (OUT/<case>/ in any format convert writes); repeat as NAME=DIR to compare methods on the same cases.")],
    ref: Annotated[Path, typer.Option(help="Prepared dataset (PREP), or a cohort with <case>/ct.* and mask.*.")],
    out: Annotated[Path, typer.Option(help="Evaluation folder.")],
    protocol: Annotated[Protocol, typer.Option(help="Metric definitions.")] = Protocol.synthrad2023,
    split: Annotated[Optional[Split], typer.Option(help="With a prepared dataset: which split to score (default test; all: train, val and test, not the cases prepare excluded).")] = None,  # noqa: UP045
    resample: Annotated[bool, typer.Option(help="Resample sCT and mask onto the CT grid instead of failing.")] = False,
    allow_nonempty_out: NonEmptyOpt = False,
    dose: Annotated[Optional[str], typer.Option(help="Also plan on the CT and recompute on the sCT: photon, proton or photon,proton (needs the extra medtrans[dose]).")] = None,  # noqa: UP045
    dose_grid_mm: Annotated[float, typer.Option(help="With --dose: the dose grid's spacing in mm (SynthRAD: 3-5).")] = 3.0,
    hlut: Annotated[Optional[Path], typer.Option(help="With --dose: your scanner's HU look-up table (two columns: HU, relative electron density / stopping power).")] = None,  # noqa: UP045
    segment: Annotated[Optional[str], typer.Option(help="Also organ and bone overlap of TotalSegmentator's labels, sCT vs CT, over SynthRAD2025's classes of this region: AB, HN or TH (needs the extra medtrans[segment] and its weights).")] = None,  # noqa: UP045
    target_roi: Annotated[Optional[str], typer.Option(help="With --dose: the target is this region of each case's rtstruct.dcm (default: target.nii.gz, else a sphere).")] = None,  # noqa: UP045
) -> None:
    """Score sCTs against reference CTs (SynthRAD metrics) and write a report; several --pred compares methods."""
    from medtrans.evaluation.compare import compare, parse_preds
    from medtrans.evaluation.dose import DoseOptions, parse_modalities
    from medtrans.evaluation.evaluate import evaluate as run
    from medtrans.evaluation.evaluate import one_line

    if (hlut is not None or dose_grid_mm != 3.0 or target_roi is not None) and not dose:
        raise MedtransError("--hlut, --dose-grid-mm and --target-roi are used only with --dose")
    if not 1.0 <= dose_grid_mm <= 10.0:
        raise MedtransError(f"--dose-grid-mm is {dose_grid_mm:g}; it must be between 1 and 10 mm")
    dose_options = DoseOptions(parse_modalities(dose), grid_mm=dose_grid_mm, hlut_path=hlut,
                                target_roi=target_roi) if dose else None
    preds = parse_preds(pred)
    if len(preds) > 1:
        comparison = compare(preds, ref, out, protocol=protocol.value, split=split.value if split else None,
                             resample=resample, allow_nonempty=allow_nonempty_out, dose=dose_options,
                             segment=segment)
        typer.echo(f"{len(preds)} methods on {comparison['n_common']} common cases:")
        for name, means in comparison["means"].items():
            typer.echo(f"  {name:<16} " + "  ".join(f"{k} {v:.4g}" for k, v in means.items() if v is not None))
        for label, tests in comparison["paired"].items():
            mae = tests.get("mae", {})
            if mae.get("n"):
                typer.echo(f"  {label}: MAE {mae['mean_diff']:+.1f} HU (95% CI {mae['ci95'][0]:+.1f} to "
                           f"{mae['ci95'][1]:+.1f}, Wilcoxon p {mae['p_wilcoxon']:.3g})")
        typer.echo(f"report: {out / 'report.html'}")
        problems = sum(len(v) for v in comparison["problems"].values())
        for name, cases in comparison["problems"].items():
            for p in cases:
                typer.echo(f"  not evaluated ({name}): {p['case']}: {p['problem']}", err=True)
        if problems:
            typer.echo(f"{problems} case evaluation(s) failed; see above", err=True)
            raise typer.Exit(1)
        return
    summary = run(next(iter(preds.values())), ref, out, protocol=protocol.value, split=split.value if split else None, resample=resample,
                  allow_nonempty=allow_nonempty_out, dose=dose_options, segment=segment)
    scope = f" ({'/'.join(summary['splits'])} split)" if summary["splits"] else ""
    typer.echo(f"{summary['n_evaluated']}/{summary['n_cases']} cases{scope}: {one_line(summary)}")
    for p in summary["problems"]:
        typer.echo(f"  not evaluated: {p['case']}: {p['problem']}", err=True)
    typer.echo(f"report: {out / 'report.html'}")
    if summary["problems"]:
        typer.echo(f"{len(summary['problems'])} case(s) could not be evaluated; see above", err=True)
        raise typer.Exit(1)


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Demo folder (replaced if it holds an earlier demo).")] = Path("medtrans_demo"),
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    config: Annotated[str, typer.Option(help="Config for the demo run (a shipped name or a YAML path).")] = "demo",
    set_: SetOpt = None,
) -> None:
    """Phantom cohort -> prepare -> train -> convert -> evaluate, with an HTML report."""
    from medtrans.demo import run_demo

    run_demo(out, config=config, overrides=set_, device=device)


def _usage_errors() -> tuple[type[Exception], ...]:
    """The parser's usage-error classes: typer >= 0.29 raises its own (it vendors click), older typer raises
    click's (huggingface_hub, which the dose extra brings, caps typer below 0.26)."""
    found: list[type[Exception]] = []
    if hasattr(typer, "TyperException"):
        found.append(typer.TyperException)
    try:
        import click

        found.append(click.ClickException)
    except ImportError:
        pass
    return tuple(found)


_USAGE_ERRORS = _usage_errors()


#: The line a user sees after Ctrl-C (the exit status is 130, as for any program a SIGINT ended).
INTERRUPTED = "medtrans: interrupted; rerun the same command to resume"


def main() -> None:
    """Entry point of the ``medtrans`` console script."""
    try:
        code = app(standalone_mode=False)
        if isinstance(code, int) and code:
            if code == 130:  # typer turns Ctrl-C into exit status 130 without a word
                print(INTERRUPTED, file=sys.stderr)
            sys.exit(code)
    except MedtransError as exc:
        if _state["debug"]:
            raise
        print(f"medtrans: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except OSError as exc:  # a file problem no check foresaw: still one line naming the file
        if _state["debug"]:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"medtrans: error: {where}{exc.strerror or exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        sys.exit(130)
    except typer.Abort:
        sys.exit(1)
    except _USAGE_ERRORS as exc:  # usage errors (unknown option, bad value) from typer's parser
        if hasattr(exc, "show"):
            exc.show()
        else:
            print(f"medtrans: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
