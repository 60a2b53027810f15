"""The `medtl` command line: a thin layer over the library. Bad input exits 2 with one line."""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from medtl.errors import MedtlError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Transfer learning for medical images: train, evaluate, compare backbones.")
console = Console()


def _setup_logging(quiet: bool) -> None:
    logger = logging.getLogger("medtl")
    logger.setLevel(logging.INFO)
    if not any(getattr(h, "_medtl_console", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
        handler._medtl_console = True
        logger.addHandler(handler)
    for h in logger.handlers:
        if getattr(h, "_medtl_console", False):
            h.setLevel(logging.WARNING if quiet else logging.INFO)


@app.command()
def train(
    data: str = typer.Argument(..., help="Folder of class folders, folder with train/ (val/, test/), or .npz"),
    backbone: Optional[str] = typer.Option(None, help="Backbone name; see `medtl backbones`"),
    strategy: Optional[str] = typer.Option(None, help="scratch | linear | partial | full"),
    weights: Optional[str] = typer.Option(None, help="default | imagenet | package | none | PATH"),
    epochs: Optional[int] = typer.Option(None, help="Maximum epochs (early stopping may end sooner)"),
    image_size: Optional[int] = typer.Option(None, help="Input size in px (default: the backbone's)"),
    channels: Optional[str] = typer.Option(None, help="replicate (gray to 3 channels) | adapt (1-channel conv)"),
    seed: Optional[int] = typer.Option(None, help="Training seed"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config; flags override it"),
    set_: list[str] = typer.Option([], "--set", help="Any config value, e.g. --set train.lr=0.01 (repeatable)"),
    out: Optional[str] = typer.Option(None, help="Parent folder of run folders"),
    name: Optional[str] = typer.Option(None, help="Run folder name (default backbone-strategy-time)"),
    strict: bool = typer.Option(False, "--strict", help="Fail on an unreadable image instead of skipping it"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Warnings only, no progress bars"),
) -> None:
    """Train and evaluate a classifier; writes a run folder."""
    from medtl.config import apply_overrides, load_config, parse_set
    from tqdm.contrib.logging import logging_redirect_tqdm

    from medtl.pipeline import run

    _setup_logging(quiet)
    overrides = {"data.path": data, "model.backbone": backbone, "model.strategy": strategy,
                 "model.weights": weights, "train.epochs": epochs, "data.image_size": image_size,
                 "data.channels": channels, "train.seed": seed, "out": out, "name": name,
                 "data.strict": True if strict else None}
    overrides.update(parse_set(set_))
    cfg = apply_overrides(load_config(config), overrides)
    redirect = contextlib.nullcontext() if quiet else logging_redirect_tqdm(loggers=[logging.getLogger("medtl")])
    with redirect:
        run_dir = run(cfg, progress=not quiet)
    console.print(f"run folder: {run_dir}")
    _print_metrics(run_dir)


def _print_metrics(run_dir: Path) -> None:
    import json

    from medtl.report import format_metrics

    metrics = json.loads((run_dir / "metrics.json").read_text())
    for split, m in metrics["splits"].items():
        print(format_metrics(split, m))


@app.command()
def evaluate(
    run_dir: Path = typer.Argument(..., help="Run folder written by `medtl train`"),
    data: str = typer.Argument(..., help="Data in any layout `train` takes, with the same classes"),
    split: str = typer.Option("test", help="train | val | test"),
    output: Optional[Path] = typer.Option(None, help="Write the metrics JSON here"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Re-score a trained run on a split of any data set (its own threshold and classes)."""
    from medtl.pipeline import evaluate as evaluate_run
    from medtl.report import format_metrics, write_json

    _setup_logging(quiet)
    metrics = evaluate_run(run_dir, data, split, progress=not quiet)
    print(format_metrics(split, metrics))
    if output:
        write_json(output, metrics)


@app.command()
def backbones() -> None:
    """List the backbones: parameters, input size, default weights, and whether they load offline."""
    from medtl.backbones import BACKBONES, weights_available_offline

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
