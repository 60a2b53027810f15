"""The `medtl` command line: a thin layer over the library. Bad input exits 2 with one line."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from medtl.core.errors import MedtlError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Transfer learning for medical images: train, evaluate, compare backbones.")
console = Console()

# options that several commands share, defined once
Backbone = Annotated[Optional[str], typer.Option(help="Backbone name; see `medtl backbones`")]
Strategy = Annotated[Optional[str], typer.Option(help="scratch | linear | partial | full")]
Epochs = Annotated[Optional[int], typer.Option(help="Maximum epochs (early stopping may end sooner)")]
ImageSize = Annotated[Optional[int], typer.Option(help="Input size in px (default: the backbone's)")]
ConfigFile = Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML run config; flags override it")]
Sets = Annotated[Optional[list[str]], typer.Option("--set", help="Any config value, e.g. --set train.lr=0.01 "
                                                   "(repeatable)")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Warnings only, no progress bars")]
RunDir = Annotated[Path, typer.Argument(help="Run folder written by `medtl train`")]


def _setup_logging(quiet: bool) -> None:
    from medtl.core.logs import console as to_console

    to_console(quiet)


@app.command()
def train(
    data: Optional[str] = typer.Argument(None, help="Folder of class folders, folder with train/ (val/, test/), "
                                         "a .csv/.tsv manifest, or .npz"),
    backbone: Backbone = None,
    strategy: Strategy = None,
    weights: Optional[str] = typer.Option(None, help="default | imagenet | package | none | PATH"),
    epochs: Epochs = None,
    image_size: ImageSize = None,
    channels: Optional[str] = typer.Option(None, help="replicate (gray to 3 channels) | adapt (1-channel conv)"),
    seed: Optional[int] = typer.Option(None, help="Training seed"),
    config: ConfigFile = None,
    set_: Sets = None,
    out: Optional[str] = typer.Option(None, help="Parent folder of run folders"),
    name: Optional[str] = typer.Option(None, help="Run folder name (default backbone-strategy-time)"),
    strict: bool = typer.Option(False, "--strict", help="Fail on an unreadable image instead of skipping it"),
    quiet: Quiet = False,
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue a killed run from its last epoch"),
) -> None:
    """Train and evaluate a classifier; writes a run folder (or continues one with --resume RUN_DIR)."""
    from medtl import api
    from medtl.core.config import parse_set
    from medtl.core.logs import redirect_bars
    from medtl.training.distributed import from_env

    main_process = from_env().main  # under torchrun, only rank 0 talks
    quiet = quiet or not main_process
    _setup_logging(quiet)
    flags = {"backbone": backbone, "strategy": strategy, "weights": weights, "epochs": epochs,
             "image_size": image_size, "channels": channels, "seed": seed, "out": out, "name": name,
             "strict": True if strict else None, **parse_set(set_ or [])}
    flags = {k: v for k, v in flags.items() if v is not None}
    with redirect_bars():
        result = api.train(data, config=config, resume=resume, progress=not quiet, **flags)
    if main_process:
        console.print(f"run folder: {result.path}")
        _print_metrics(result.metrics)


def _print_metrics(metrics: dict) -> None:
    from medtl.evaluation.report import format_metrics

    for split, m in metrics["splits"].items():
        print(format_metrics(split, m))


@app.command()
def evaluate(
    run_dir: RunDir,
    data: str = typer.Argument(..., help="Data in any layout `train` takes, with the same classes"),
    split: str = typer.Option("test", help="train | val | test"),
    output: Optional[Path] = typer.Option(None, help="Write the metrics JSON here"),
    quiet: Quiet = False,
) -> None:
    """Re-score a trained run on a split of any data set (its own threshold and classes)."""
    from medtl import api
    from medtl.evaluation.report import format_metrics

    _setup_logging(quiet)
    metrics = api.evaluate(run_dir, data, split, output, progress=not quiet)
    print(format_metrics(split, metrics))


@app.command()
def predict(
    run_dir: RunDir,
    paths: list[Path] = typer.Argument(..., help="Image or DICOM files, or folders of them"),
    output: Path = typer.Option(Path("predictions.csv"), help="CSV: path, predicted, probabilities, threshold"),
    batch_size: int = typer.Option(32, help="Images per forward pass"),
    quiet: Quiet = False,
) -> None:
    """Score new images with a trained run; unreadable files are listed, not fatal."""
    from medtl import api

    _setup_logging(quiet)
    run = api.Run.load(run_dir)
    rows = run.predict(paths, batch_size, progress=not quiet)
    rows.to_csv(output)
    counts = {c: sum(r["predicted"] == c for r in rows) for c in run.predictor.classes}
    console.print(f"{len(rows)} images scored ({', '.join(f'{c} {n}' for c, n in counts.items())}) -> {output}")
    _list_failures(rows.failed)


def _list_failures(failed: dict[str, str]) -> None:
    """One line per unreadable file on stderr (full paths, never truncated)."""
    if failed:
        print(f"{len(failed)} unreadable files skipped:", file=sys.stderr)
        for path, reason in failed.items():
            print(f"  {path}: {reason}", file=sys.stderr)


@app.command()
def explain(
    run_dir: RunDir,
    paths: list[Path] = typer.Argument(None, help="Images to explain (omit with --grid)"),
    out: Path = typer.Option(Path("explain"), help="Folder for the overlay PNGs"),
    method: str = typer.Option("gradcam", help="gradcam | gradcam++ | eigencam"),
    grid: bool = typer.Option(False, "--grid", help="Also write cam_grid.png (test TPs/FPs/FNs) into the run folder"),
) -> None:
    """Grad-CAM heat maps over images (PNG), and a grid of test examples for the run's report."""
    from medtl import api

    _setup_logging(False)
    if not paths and not grid:
        raise MedtlError("nothing to explain: pass image files or folders, or --grid")
    run = api.Run.load(run_dir)
    if paths:
        written, failed = run.explain(paths, out, method)
        console.print(f"{len(written)} overlays -> {out}")
        _list_failures(failed)
    if grid:
        console.print(f"grid -> {run.cam_grid(method)}")


@app.command()
def export(
    run_dir: RunDir,
    format_: str = typer.Option("onnx", "--format", help="onnx | torchscript"),
    output: Optional[Path] = typer.Option(None, help="File to write (default: in the run folder)"),
    images: list[Path] = typer.Option([], "--image", help="Real images for the parity check (repeatable)"),
    tolerance: float = typer.Option(1e-4, help="Largest allowed |exported - PyTorch| probability difference"),
) -> None:
    """Export for deployment; fails loudly when the exported model disagrees with PyTorch."""
    from medtl import api

    _setup_logging(False)
    path, diff = api.Run.load(run_dir).export(format_, output, images or None, tolerance)
    console.print(f"{path} written; parity with PyTorch: max |difference| {diff:.2e} on "
                  f"{'the given images' if images else '8 noise inputs'}")


@app.command()
def serve(
    run_dir: RunDir,
    host: str = typer.Option("127.0.0.1", help="Address to listen on (keep 127.0.0.1 unless you mean to share)"),
    port: int = typer.Option(8000),
    max_mb: float = typer.Option(20.0, help="Largest upload accepted, MiB"),
) -> None:
    """A local web page: upload an image or DICOM, see probabilities and the Grad-CAM overlay."""
    import uvicorn

    from medtl import api
    from medtl.deploy.serve import create_app

    _setup_logging(False)
    app_ = create_app(api.Run.load(run_dir).predictor, int(max_mb * 2**20))
    console.print(f"serving {run_dir} on http://{host}:{port}/")
    uvicorn.run(app_, host=host, port=port, log_level="warning")


@app.command()
def study(
    config: Path = typer.Argument(..., help="Study YAML: name, out, base (a run config), grid"),
    quiet: Quiet = False,
) -> None:
    """Run a grid of runs (resumable: finished runs are kept) and write the study report."""
    from medtl import api

    _setup_logging(quiet)
    console.print(f"report: {api.study(config, progress=not quiet)}")


@app.command()
def report(study_dir: Path = typer.Argument(..., help="A study folder (<out>/<name>)")) -> None:
    """(Re)write a study's report from its finished runs."""
    from medtl import api

    console.print(f"report: {api.report(study_dir)}")


@app.command()
def tune(
    data: str = typer.Argument(..., help="Data as `medtl train` takes it"),
    trials: int = typer.Option(20, help="Trials for this process (workers sharing --storage add up)"),
    backbone: Backbone = None,
    strategy: Strategy = None,
    epochs: Epochs = None,
    image_size: ImageSize = None,
    config: ConfigFile = None,
    set_: Sets = None,
    out: Path = typer.Option(Path("tune"), help="Folder for trials' run folders (and tune.db by default)"),
    storage: Optional[str] = typer.Option(None, help="Optuna storage URL (default sqlite:///OUT/tune.db); "
                                          "share one, e.g. postgresql://..., between workers"),
    study_name: str = typer.Option("medtl", help="Optuna study name in the storage"),
    quiet: Quiet = False,
) -> None:
    """Search learning rate, head, dropout, weight decay, batch size (and unfrozen depth for partial) with
    Optuna, pruning on validation AUC."""
    from medtl import api
    from medtl.core.config import parse_set

    _setup_logging(quiet)
    flags = {"backbone": backbone, "strategy": strategy, "epochs": epochs, "image_size": image_size,
             **parse_set(set_ or [])}
    study_ = api.tune(data, trials, out, storage, study_name, config,
                      **{k: v for k, v in flags.items() if v is not None})
    finished = [t for t in study_.trials if t.value is not None]
    if finished:
        best = study_.best_trial
        console.print(f"best of {len(finished)} finished trials: validation AUC {best.value:.4f} with {best.params}; "
                      f"run folder {best.user_attrs.get('run_dir')}")


@app.command()
def audit(
    data: str = typer.Argument(..., help="Data as `medtl train` takes it"),
    output: Optional[Path] = typer.Option(None, help="Write the full audit as JSON here"),
    perceptual: bool = typer.Option(True, help="Also look for near-duplicates (perceptual hash)"),
    set_: Sets = None,
) -> None:
    """Duplicates within and across splits, unreadable files, class balance, and class-correlated properties."""
    from medtl import api
    from medtl.core.config import parse_set
    from medtl.data.audit import warnings_for

    _setup_logging(False)
    report_ = api.audit(data, perceptual, output, **parse_set(set_ or []))
    _print_audit(report_)
    for line in warnings_for(report_):
        console.print(f"[yellow]warning:[/yellow] {line}")


def _print_audit(r: dict) -> None:
    table = Table(title=f"audit: {r['images']} images")
    table.add_column("split")
    for c in r["classes"]:
        table.add_column(c, justify="right")
    for split, counts in r["balance"].items():
        table.add_row(split, *[str(counts[c]) for c in r["classes"]])
    console.print(table)
    dup = r["exact_duplicates"]
    cross = sum(len(g["splits"]) > 1 for g in dup)
    near_cross = sum(len(p["splits"]) > 1 for p in r["near_duplicates"])
    console.print(f"unreadable: {len(r['unreadable'])}; byte-identical groups: {len(dup)} ({cross} across splits); "
                  f"near-duplicate pairs: {len(r['near_duplicates'])} ({near_cross} across splits)")
    for s in r["shortcuts"]:
        console.print(f"class-correlated {s['property']}: {s['by_class']}")


@app.command()
def backbones() -> None:
    """List the backbones: parameters, input size, default weights, and whether they load offline."""
    from medtl.models.backbones import BACKBONES, weights_available_offline

    table = Table(title="medtl backbones", caption="offline 'no': pass --weights PATH, or train --strategy scratch")
    for col in ("name", "params (M)", "input px", "feature dim", "default weights", "offline"):
        table.add_column(col, no_wrap=True)
    for spec in BACKBONES.values():
        params = sum(p.numel() for p in spec.builder().parameters()) / 1e6
        table.add_row(spec.name, f"{params:.1f}", str(spec.input_size), str(spec.feature_dim),
                      spec.default_weights, "yes" if weights_available_offline(spec) else "no")
    console.print(table)


def main() -> None:
    try:
        app(standalone_mode=False)
    except MedtlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as exc:  # click usage errors
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise
