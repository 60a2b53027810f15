"""`medtl predict`, `explain`, `export` and `serve`: a trained run's model used on new images."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from medtl.cli import output as cli_output
from medtl.cli.options import Coverage, Engine, OldOut, Quiet, RunDir
from medtl.cli.options import renamed as _renamed
from medtl.cli.options import setup_logging as _setup_logging
from medtl.core.errors import MedtlError


def register(app: typer.Typer) -> None:
    """Add `predict`, `explain`, `export` and `serve` to the `medtl` app."""
    app.command(epilog="Example: medtl predict runs/first new_xrays/ scan.dcm --output predictions.csv")(predict)
    app.command(epilog="Example: medtl explain runs/first xray1.png xray2.png --output-dir cams")(explain)
    app.command(epilog="Example: medtl export runs/first --format onnx --image test_xrays/ --output model.onnx")(export)
    app.command(epilog="Example: medtl serve runs/first --port 8000   # then open http://127.0.0.1:8000/")(serve)


def predict(
    run_dir: RunDir,
    paths: list[Path] = typer.Argument(..., help="Image or DICOM files, or folders of them"),
    output: Path = typer.Option(Path("predictions.csv"), "--output", "-o",
                                help="CSV: path, predicted, probabilities, threshold"),
    batch_size: int = typer.Option(32, help="Images per forward pass"),
    engine: Engine = "auto",
    coverage: Coverage = 0.9,
    quiet: Quiet = False,
) -> None:
    """Score new images with a trained run; unreadable files are listed, not fatal."""
    from medtl import api
    from medtl.deploy.predictions import trust_summary

    _setup_logging(quiet)
    run = api.Run.load(run_dir)
    rows = run.predict(paths, batch_size, progress=not quiet, engine=engine, coverage=coverage)
    rows.to_csv(output)
    counts = {c: sum(r["predicted"] == c for r in rows) for c in run.predictor.classes}
    cli_output.say(f"{len(rows)} images scored ({', '.join(f'{c} {n}' for c, n in counts.items())}) -> {output}")
    cli_output.say(trust_summary(rows, coverage))
    cli_output.list_failures(rows.failed)


def explain(
    run_dir: RunDir,
    paths: list[Path] = typer.Argument(None, help="Images to explain (omit with --grid)"),
    output_dir: Optional[Path] = typer.Option(None, "--output-dir", "-o",
                                              help="Folder for the overlay PNGs (default: explain)"),
    method: str = typer.Option("gradcam", help="gradcam | gradcam++ | eigencam"),
    grid: bool = typer.Option(False, "--grid", help="Also write cam_grid.png (test TPs/FPs/FNs) into the run folder"),
    out: OldOut = None,
) -> None:
    """Grad-CAM heat maps over images (PNG), and a grid of test examples for the run's report."""
    from medtl import api

    _setup_logging(False)
    output_dir = _renamed(output_dir, out, "--out", "--output-dir") or Path("explain")
    if not paths and not grid:
        raise MedtlError("nothing to explain: pass image files or folders, or --grid")
    run = api.Run.load(run_dir)
    if paths:
        written, failed = run.explain(paths, output_dir, method)
        cli_output.say(f"{len(written)} overlays -> {output_dir}")
        cli_output.list_failures(failed)
    if grid:
        cli_output.say(f"grid -> {run.cam_grid(method)}")


def export(
    run_dir: RunDir,
    format_: str = typer.Option("onnx", "--format", help="onnx | torchscript"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="File to write (default: in the run folder)"),
    images: list[Path] = typer.Option([], "--image", help="Real images for the parity check (repeatable)"),
    tolerance: float = typer.Option(1e-4, help="Largest allowed |exported - PyTorch| probability difference"),
) -> None:
    """Export for deployment; fails loudly when the exported model disagrees with PyTorch."""
    from medtl import api

    _setup_logging(False)
    path, diff = api.Run.load(run_dir).export(format_, output, images or None, tolerance)
    cli_output.say(f"{path} written; parity with PyTorch: max |difference| {diff:.2e} on "
         f"{'the given images' if images else '8 noise inputs'}")


def serve(
    run_dir: RunDir,
    host: str = typer.Option("127.0.0.1", help="Address to listen on (keep 127.0.0.1 unless you mean to share)"),
    port: int = typer.Option(8000, help="Port to listen on"),
    max_mb: float = typer.Option(20.0, help="Largest upload accepted, MiB"),
    engine: Engine = "auto",
    coverage: Coverage = 0.9,
) -> None:
    """A local web page: upload an image or DICOM, see probabilities and the Grad-CAM overlay."""
    import uvicorn

    from medtl import api
    from medtl.deploy.serve import check_address, create_app

    _setup_logging(False)
    check_address(host, port)  # a bad port or a busy address: one line, before the model loads
    from medtl.evaluation.conformal import check_coverage

    pred = api.Run.load(run_dir).predictor_on(engine)
    pred.coverage = check_coverage(coverage)
    app_ = create_app(pred, int(max_mb * 2**20))
    cli_output.say(f"serving {run_dir} on http://{host}:{port}/")
    uvicorn.run(app_, host=host, port=port, log_level="warning")
