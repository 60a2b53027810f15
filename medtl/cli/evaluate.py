"""`medtl evaluate` and `medtl calibrate`: a trained run checked, and adapted, on labelled data from a new site."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Optional

import typer

from medtl.cli.options import Coverage, Quiet, RevealIds, RunDir

log = logging.getLogger(__name__)

Split = Annotated[str, typer.Option(help="train | val | test: the split of DATA to use (a plain class-folder "
                                         "tree is used whole)")]
Classes = Annotated[Optional[str], typer.Option(help="Map the data's class names onto the run's: NEW=OLD,... "
                                                     "(e.g. 0=NORMAL,1=PNEUMONIA)")]
Threshold = Annotated[Optional[str], typer.Option(help="Operating point: youden | f1 | a number | sensitivity>=0.95 "
                                                       "| specificity>=0.90 (chosen on the run's validation; "
                                                       "default: the run's threshold)")]
Temperature = Annotated[bool, typer.Option("--temperature", help="Refit a temperature too (calibration part)")]


def register(app: typer.Typer) -> None:
    """Add `evaluate` and `calibrate` to the `medtl` app."""
    app.command(epilog="Example: medtl evaluate runs/first other_hospital/ --classes 0=NORMAL,1=PNEUMONIA "
                       "--threshold 'sensitivity>=0.95' --calibrate-fraction 0.2")(evaluate)
    app.command(epilog="Example: medtl calibrate runs/first local_cases/ --temperature --name first-site-b")(calibrate)


def evaluate(
    run_dir: RunDir,
    data: str = typer.Argument(..., help="Labelled data in any layout `train` takes"),
    split: Split = "test",
    output_dir: Optional[Path] = typer.Option(None, "--output-dir", "-o", help="The evaluation folder (default: "
                                              "RUN/evaluations/<data>-<split>)"),
    classes: Classes = None,
    threshold: Threshold = None,
    calibrate_fraction: Optional[float] = typer.Option(None, help="Refit the threshold on this stratified, seeded "
                                                       "part of DATA and report the rest before and after"),
    temperature: Temperature = False,
    seed: int = typer.Option(0, help="Seed of the calibration split"),
    coverage: Coverage = 0.9,
    output: Optional[Path] = typer.Option(None, "--output", hidden=True, help="Deprecated: metrics JSON file"),
    reveal_ids: RevealIds = False,
    quiet: Quiet = False,
) -> None:
    """Score a trained run on labelled data from anywhere; write an evaluation folder (metrics with intervals,
    calibration, figures, per-image predictions, copies of its training images)."""
    from medtl import api
    from medtl.cli import output as cli_output
    from medtl.core.io import write_json
    from medtl.core.logs import console

    console(quiet)
    where = output_dir or Path(run_dir) / "evaluations" / f"{Path(data).stem or 'data'}-{split}"
    ev = api.Run.load(run_dir).evaluate(data, split, progress=not quiet, output_dir=where, classes=classes,
                                        threshold=threshold, calibrate_fraction=calibrate_fraction,
                                        temperature=temperature, seed=seed, coverage=coverage,
                                        reveal_ids=True if reveal_ids else None)
    if output is not None:
        log.warning("--output is deprecated for evaluate; the folder's metrics.json holds everything (--output-dir)")
        write_json(output, ev.metrics)
    for line in summary(ev):
        print(line)
    cli_output.say(f"evaluation folder: {ev.folder}")


def summary(ev) -> list[str]:
    """The evaluation as a few lines: metrics, operating point, copies, recalibration."""
    from medtl.evaluation.report import format_metrics

    lines = [format_metrics(ev.split, ev.metrics)]
    if ev.patient_level:
        lines.append(format_metrics(f"{ev.split} per patient ({ev.patient_level['rule']})",
                                    ev.patient_level["metrics"]))
    op = ev.operating_point
    if op:
        reached = "; ".join(f"{where}: " + ", ".join(f"{k} {_rate(op[where], k)}" for k in ("sensitivity", "specificity"))
                            for where in ("validation", "evaluated") if where in op)
        lines.append(f"operating point {op['spec']}: threshold {op['threshold']:.4f} ({op['chosen_on']}); {reached}")
    if ev.copies.get("checked"):
        lines.append(f"copies of the run's {'/'.join(ev.copies['against'])} images: {ev.copies['copies']}")
    else:
        lines.append(ev.copies.get("note", ""))
    if ev.without_copies:
        lines.append(format_metrics(f"{ev.split} without copies", ev.without_copies))
    if ev.shift and ev.shift.get("verdict"):
        lines.append(f"shift: {ev.shift['verdict']}")
    if ev.referral and ev.referral.get("available"):
        r = ev.referral
        reached = f", coverage reached {r['coverage_reached']:.3f}" if "coverage_reached" in r else ""
        lines.append(f"referral at coverage {r['coverage']:.2f}: {r['referral_rate']:.1%} of images referred{reached}")
    if ev.recalibration:
        r = ev.recalibration
        lines.append(f"local recalibration on {r['split']['calibration_n']} images, held out "
                     f"{r['split']['heldout_n']}:")
        lines += [format_metrics(f"  held-out {when}", r[when]) for when in ("before", "after")]
    return lines


def _rate(d: dict, key: str) -> str:
    ci = d.get(f"{key}_ci95")
    value = d.get(key)
    text = "undefined" if value is None or value != value else f"{value:.3f}"
    return text + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def calibrate(
    run_dir: RunDir,
    data: str = typer.Argument(..., help="Labelled local images in any layout `train` takes"),
    split: Split = "test",
    output_dir: Optional[Path] = typer.Option(None, "--output-dir", "-o", help="Parent folder of the new run "
                                              "(default: the source run's)"),
    name: Optional[str] = typer.Option(None, help="The new run's folder name (default: <run>-calibrated)"),
    classes: Classes = None,
    threshold: Threshold = None,
    temperature: Temperature = False,
    quiet: Quiet = False,
) -> None:
    """Refit a run's threshold (and with --temperature its temperature) on labelled local images; writes a new
    run folder with the same weights and a record of where it came from."""
    from medtl import api
    from medtl.cli import output as cli_output
    from medtl.core.logs import console

    console(quiet)
    new = api.Run.load(run_dir).calibrate(data, split=split, output_dir=output_dir, name=name, classes=classes,
                                          threshold=threshold, temperature=temperature, progress=not quiet)
    origin = new.metrics["calibrated_from"]
    print(f"threshold {origin['threshold_before']:.4f} -> {new.metrics['threshold']:.4f}, temperature "
          f"{origin['temperature_before']:.3f} -> {new.metrics['temperature']:.3f} ({origin['n']} local images)")
    cli_output.print_metrics(new.metrics)
    cli_output.say(f"run folder: {new.path}")
