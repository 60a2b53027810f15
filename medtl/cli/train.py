"""`medtl train` and `medtl tune`: their flags, each the dotted config key it sets, over the Python API."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from medtl.cli import output as cli_output
from medtl.cli.options import OldOut, Quiet, RevealIds, Sets
from medtl.cli.options import renamed as _renamed
from medtl.cli.options import setup_logging as _setup_logging
from medtl.core.config import STRATEGIES


def register(app: typer.Typer) -> None:
    app.command(epilog="Example: medtl train data/ --strategy linear --epochs 5 --output-dir runs --name first")(train)
    app.command(epilog="Example: medtl tune data/ --strategy linear --trials 30 --output-dir tune")(tune)


# the CLI's vocabulary: each flag of train and tune -> the dotted config key it sets (--set takes dotted keys)
FLAGS = {"backbone": "model.backbone", "strategy": "model.strategy", "weights": "model.weights",
         "epochs": "train.epochs", "image_size": "data.image_size", "channels": "data.channels",
         "seed": "train.seed", "budget": "train.budget", "output_dir": "out", "name": "name", "strict": "data.strict",
         "reveal_ids": "data.reveal_ids", "track": "runtime.track"}


def _settings(flags: dict[str, Any], sets: list[str] | None) -> dict[str, Any]:
    """The flags given (not None) as dotted keys, then the `--set key=value` items."""
    from medtl.core.config import parse_set

    given = {FLAGS[k]: str(v) if isinstance(v, Path) else v for k, v in flags.items() if v is not None}
    return {**given, **parse_set(sets or [])}


# options that several commands share, defined once
Backbone = Annotated[Optional[str], typer.Option(help="Backbone name; see `medtl backbones`")]
Strategy = Annotated[Optional[str], typer.Option(help=" | ".join(STRATEGIES))]
Epochs = Annotated[Optional[int], typer.Option(help="Maximum epochs (early stopping may end sooner)")]
ImageSize = Annotated[Optional[int], typer.Option(help="Input size in px (default: the backbone's)")]
ConfigFile = Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML run config; flags override it")]
# Quiet, Sets, OldOut (and RunDir, Engine, Coverage): medtl/cli/options.py, shared with the other medtl/cli/ modules


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
    budget: Optional[str] = typer.Option(None, help="Wall clock for the run, e.g. 15m, 90s, 1.5h: training stops "
                                         "after the epoch that reaches it (auto: shared by its candidates; "
                                         "default 15m for auto, none otherwise)"),
    config: ConfigFile = None,
    set_: Sets = None,
    output_dir: Optional[Path] = typer.Option(None, "--output-dir", "-o",
                                              help="Parent folder of run folders (default: runs)"),
    name: Optional[str] = typer.Option(None, help="Run folder name (default backbone-strategy-time)"),
    strict: bool = typer.Option(False, "--strict", help="Fail on an unreadable image instead of skipping it"),
    reveal_ids: RevealIds = False,
    track: Optional[list[str]] = typer.Option(None, "--track", help="Also log to mlflow[:DIR|URI] or "
                                              "tensorboard[:DIR] (repeatable; default a store beside the run "
                                              "folders; needs pip install -e \".[track]\")"),
    quiet: Quiet = False,
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue a killed run from its last epoch"),
    out: OldOut = None,
) -> None:
    """Train and evaluate a classifier; writes a run folder (or continues one with --resume RUN_DIR)."""
    from medtl import api
    from medtl.core.logs import redirect_bars
    from medtl.training.distributed import from_env

    main_process = from_env().main  # under torchrun, only rank 0 talks
    quiet = quiet or not main_process
    _setup_logging(quiet)
    output_dir = _renamed(output_dir, out, "--out", "--output-dir", notify=main_process)
    flags = _settings({"backbone": backbone, "strategy": strategy, "weights": weights, "epochs": epochs,
                       "image_size": image_size, "channels": channels, "seed": seed, "budget": budget,
                       "output_dir": output_dir, "name": name, "strict": True if strict else None,
                       "reveal_ids": True if reveal_ids else None, "track": track or None}, set_)
    with redirect_bars():
        result = api.train(data, config=config, resume=resume, progress=not quiet, **flags)
    if main_process:
        cli_output.say(f"run folder: {result.path}")
        cli_output.print_metrics(result.metrics)


def tune(
    data: str = typer.Argument(..., help="Data as `medtl train` takes it"),
    trials: int = typer.Option(20, help="Trials for this process (workers sharing --storage add up)"),
    backbone: Backbone = None,
    strategy: Strategy = None,
    epochs: Epochs = None,
    image_size: ImageSize = None,
    config: ConfigFile = None,
    set_: Sets = None,
    output_dir: Optional[Path] = typer.Option(None, "--output-dir", "-o", help="Folder for trials' run folders "
                                              "(and tune.db by default; default: tune)"),
    storage: Optional[str] = typer.Option(None, help="Optuna storage URL (default sqlite:///OUTPUT_DIR/tune.db); "
                                          "share one, e.g. postgresql://..., between workers"),
    study_name: str = typer.Option("medtl", help="Optuna study name in the storage"),
    quiet: Quiet = False,
    out: OldOut = None,
) -> None:
    """Search learning rate, head, dropout, weight decay, batch size (and unfrozen depth for partial) with
    Optuna, pruning on validation AUC."""
    from medtl import api

    _setup_logging(quiet)
    output_dir = _renamed(output_dir, out, "--out", "--output-dir") or Path("tune")
    flags = _settings({"backbone": backbone, "strategy": strategy, "epochs": epochs, "image_size": image_size}, set_)
    study_ = api.tune(data, trials, output_dir, storage, study_name, config, **flags)
    finished = [t for t in study_.trials if t.value is not None]
    if finished:
        best = study_.best_trial
        cli_output.say(f"best of {len(finished)} finished trials: validation AUC {best.value:.4f} with {best.params}; "
             f"run folder {best.user_attrs.get('run_dir')}")
