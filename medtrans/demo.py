"""``medtrans demo``: the whole pipeline on a synthetic phantom cohort, end to end.

phantom cohort (raw, misaligned) -> prepare (registration) -> train (``configs/demo.yaml``) -> convert the
held-out test cases -> evaluate with the HTML report, next to a context-free MR-intensity lookup.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from medtrans.config import load_config
from medtrans.errors import MedtransError
from medtrans.formats import SCT_OUTPUTS
from medtrans.output_dirs import MARKER, claim_output_dir, releases_outputs
from medtrans.prepared import PreparedDataset

DEMO_CASES = 6


def _lookup_baseline(prep: Path, manifest: dict[str, Any], out: Path, spec) -> None:
    """Write the lookup baseline's sCT for the test cases into ``out/<case>/sct.nii.gz``."""
    from medtrans.evaluation.baselines import fit_baselines, lookup_sct
    from medtrans.io import write_volume

    dataset = PreparedDataset(prep, manifest)
    lookup, _ = fit_baselines(prep, dataset.split("train"), spec)
    for name in dataset.split("test"):
        write_volume(lookup_sct(lookup, dataset.case(name).read("mr"), spec), out / name / SCT_OUTPUTS["nifti"])


@releases_outputs
def run_demo(out: str | Path, *, config: str | Path = "demo", overrides: list[str] | None = None,
             device: str = "auto", cases: int = DEMO_CASES, progress: bool = True) -> dict[str, Any]:
    """Run the demo into ``out`` (replaced if it holds an earlier demo) and return the two summaries."""
    from medtrans.convert import convert_cohort
    from medtrans.data_prep.pipeline import prepare_cohort, summary_table
    from medtrans.evaluation.evaluate import evaluate, one_line
    from medtrans.intensity import MRNormalization
    from medtrans.phantom import make_cohort
    from medtrans.training.trainer import train

    cfg = load_config(config, overrides=overrides)  # a bad config fails before anything is written
    out = claim_output_dir(out, kind="demo", signatures=[".medtrans-demo"])
    for entry in out.iterdir():  # an earlier demo is replaced whole
        if entry.name != MARKER:
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    say = print if progress else (lambda *a, **k: None)
    say(f"[1/5] phantom cohort: {cases} synthetic subjects (raw export, CT misaligned) -> {out / 'cohort'}")
    make_cohort(out / "cohort", cases=cases, seed=0, aligned=False)
    say("[2/5] prepare: register CT to MR, masks, normalization, slices")
    manifest = prepare_cohort(out / "cohort", out / "prep", cfg, workers=0, progress=progress)
    say(summary_table(manifest))
    if manifest["failed"]:
        raise MedtransError(f"demo preparation failed for {len(manifest['failed'])} case(s)")
    say("[3/5] train")
    train(out / "prep", out / "run", cfg, device=device, progress=progress)
    say("[4/5] convert the held-out test cases")
    test_cases = manifest["split"]["test"]
    (out / "test_mr").mkdir()
    prepared = PreparedDataset(out / "prep", manifest)
    for name in test_cases:
        (out / "test_mr" / name).mkdir()
        shutil.copy(prepared.case(name).mr_path, out / "test_mr" / name / "mr.nii.gz")
    convert_cohort(out / "run", out / "test_mr", out / "sct", device=device, progress=progress)
    _lookup_baseline(out / "prep", manifest, out / "baseline_sct", MRNormalization.from_prepare(cfg.prepare))
    say("[5/5] evaluate")
    ref = out / "test_ref"
    ref.mkdir()
    for name in test_cases:
        (ref / name).mkdir()
        case = prepared.case(name)
        for f in (case.mr_path, case.ct_path, case.mask_path):
            shutil.copy(f, ref / name / f.name)
    model = evaluate(out / "sct", ref, out / "eval", progress=progress)
    base = evaluate(out / "baseline_sct", ref, out / "eval_baseline", report=False, progress=False)
    say(f"\nreport: {(out / 'eval' / 'report.html').resolve()}")
    say(f"held-out test cases ({len(test_cases)}): model    {one_line(model)}")
    say(f"                              lookup   {one_line(base)}  (context-free MR-intensity -> HU baseline)")
    return {"model": model, "baseline": base}
