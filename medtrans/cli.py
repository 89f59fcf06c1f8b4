"""The ``medtrans`` command line: one subcommand per stage.

Errors that a user can cause print one line (``medtrans: error: <file>: <problem>``) and exit with
status 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from medtrans.errors import MedtransError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="MRI -> synthetic CT: info, phantom, prepare, train, convert, evaluate, demo.")
_state = {"debug": False}


class PhantomFormat(str, Enum):
    nifti = "nifti"
    mha = "mha"
    dicom = "dicom"


class OutFormat(str, Enum):
    nifti = "nifti"
    mha = "mha"
    dicom = "dicom"


class Protocol(str, Enum):
    synthrad2023 = "synthrad2023"
    synthrad2025 = "synthrad2025"


ConfigOpt = Annotated[Optional[Path], typer.Option("--config", help="YAML config file or a name under configs/.")]  # noqa: UP045
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="Override a config key: section.key=value.")]  # noqa: UP045


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
) -> None:
    """Register, mask, normalize and slice a cohort into a paired training dataset."""
    from data_prep.pipeline import prepare_cohort, summary_table
    from medtrans.config import load_config

    cfg = load_config(config, overrides=set_)
    manifest = prepare_cohort(input, out, cfg, workers=workers)
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
    max_steps: Annotated[Optional[int], typer.Option(help="Stop after this global step (the LR schedule's horizon stays train.max_steps).")] = None,  # noqa: UP045
    max_minutes: Annotated[Optional[float], typer.Option(help="Stop (with a checkpoint) after this many minutes.")] = None,  # noqa: UP045
    resume: Annotated[bool, typer.Option(help="Continue from RUN/checkpoints/last.pt.")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    seed: Annotated[int, typer.Option(help="Seed of the weights and the data stream.")] = 0,
) -> None:
    """Train the MONAI UNet + PatchGAN generator (launch with torchrun for several GPUs)."""
    from medtrans.config import load_config
    from medtrans.training.trainer import train as run

    cfg = load_config(config, overrides=set_)
    result = run(data, out, cfg, stop_step=max_steps, max_minutes=max_minutes, resume=resume, device=device,
                 seed=seed)
    if "bundle" in result:
        typer.echo(f"step {result['step']}; best validation MAE {result['best_val_mae']:.1f} HU; "
                   f"bundle: {result['bundle']}")


@app.command()
def convert(
    model: Annotated[Path, typer.Option(help="Training run folder or model bundle.")],
    input: Annotated[Path, typer.Option("--input", help="MR file, DICOM series, case folder or cohort.")],
    out: Annotated[Path, typer.Option(help="Output folder.")],
    format: Annotated[OutFormat, typer.Option("--format", help="Output format.")] = OutFormat.nifti,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    batch_size: Annotated[int, typer.Option(min=0, help="Slices per forward pass (0 = auto: 2 on CPU, 32 on CUDA).")] = 0,
    shard: Annotated[Optional[str], typer.Option(help="i/n: convert every n-th case from i (job arrays).")] = None,  # noqa: UP045
    overwrite: Annotated[bool, typer.Option(help="Redo finished cases.")] = False,
    tta: Annotated[bool, typer.Option(help="Average with the left-right flipped prediction.")] = False,
) -> None:
    """Convert MR volumes into synthetic CT on each MR's exact grid."""
    from medtrans.convert import convert_cohort

    results = convert_cohort(model, input, out, fmt=format.value, device=device, batch_size=batch_size, shard=shard,
                             overwrite=overwrite, tta=tta)
    for r in results:
        note = r.get("error", "") if r["status"] == "failed" else f"{r.get('timings_s', {}).get('total', 0):.1f}s"
        typer.echo(f"{r['case']:<28} {r['status']:<8} {note}")
    failed = [r for r in results if r["status"] == "failed"]
    typer.echo(f"{len(results) - len(failed)} converted or skipped, {len(failed)} failed -> {out}")
    if failed:
        raise typer.Exit(1)


@app.command()
def evaluate(
    pred: Annotated[Path, typer.Option(help="Folder of OUT/<case>/sct.* (convert's output).")],
    ref: Annotated[Path, typer.Option(help="Cohort with <case>/ct.* (or ct_registered.*) and mask.*.")],
    out: Annotated[Path, typer.Option(help="Evaluation folder.")],
    protocol: Annotated[Protocol, typer.Option(help="Metric definitions.")] = Protocol.synthrad2023,
    resample: Annotated[bool, typer.Option(help="Resample sCT and mask onto the CT grid instead of failing.")] = False,
) -> None:
    """Score sCTs against reference CTs (SynthRAD metrics) and write a report."""
    from evaluation.evaluate import evaluate as run
    from evaluation.evaluate import one_line

    summary = run(pred, ref, out, protocol=protocol.value, resample=resample)
    typer.echo(f"{summary['n_evaluated']}/{summary['n_cases']} cases: {one_line(summary)}")
    for p in summary["problems"]:
        typer.echo(f"  not evaluated: {p['case']}: {p['problem']}", err=True)
    typer.echo(f"report: {out / 'report.html'}")


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Demo folder (replaced if it holds an earlier demo).")] = Path("medtrans_demo"),
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    config: Annotated[Path, typer.Option(help="Config for the demo run.")] = Path("demo"),
    set_: SetOpt = None,
) -> None:
    """Phantom cohort -> prepare -> train -> convert -> evaluate, with an HTML report."""
    from medtrans.demo import run_demo

    run_demo(out, config=config, overrides=set_, device=device)


def main() -> None:
    """Entry point of the ``medtrans`` console script."""
    try:
        code = app(standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except MedtransError as exc:
        if _state["debug"]:
            raise
        print(f"medtrans: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("medtrans: interrupted; rerun the same command to resume", file=sys.stderr)
        sys.exit(130)
    except typer.Abort:
        sys.exit(1)
    except typer.TyperException as exc:  # usage errors (unknown option, bad value) from typer's parser
        if hasattr(exc, "show"):
            exc.show()
        else:
            print(f"medtrans: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
