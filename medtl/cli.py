"""The `medtl` command line: a thin layer over the library. Bad input exits 2 with one line.

Naming: an option that names a file the command writes is `--output/-o FILE`; one that names a folder is
`--output-dir/-o DIR`. Old spellings still work for now and log a one-line deprecation notice.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from medtl import __version__
from medtl.core.config import STRATEGIES
from medtl.core.errors import MedtlError
from medtl.core.faults import as_error
from medtl import cli_data, cli_deploy, cli_evaluate, cli_output, cli_study
from medtl.cli_options import OldOut, Quiet, RevealIds, Sets
from medtl.cli_options import renamed as _renamed
from medtl.cli_options import setup_logging as _setup_logging

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Transfer learning for medical images: train, evaluate, compare backbones.",
                  epilog="Example: medtl train data/ --strategy linear --output-dir runs")
log = logging.getLogger(__name__)

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
# Quiet, Sets, OldOut (and RunDir, Engine, Coverage): medtl/cli_options.py, shared with the cli_<area> modules


def _version(value: bool) -> None:
    if value:
        print(f"medtl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print medtl's version and exit"),
) -> None:
    pass


@app.command(epilog="Example: medtl train data/ --strategy linear --epochs 5 --output-dir runs --name first")
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


cli_evaluate.register(app)  # evaluate, calibrate
cli_deploy.register(app)  # predict, explain, export, serve
cli_study.register(app)


@app.command(epilog="Example: medtl report studies/kermany_seed_protocol")
def report(study_dir: Path = typer.Argument(..., help="A study folder (<out>/<name>)")) -> None:
    """(Re)write a study's report from its finished runs."""
    from medtl import api

    _setup_logging(False)
    cli_output.say(f"report: {api.report(study_dir)}")


@app.command(epilog="Example: medtl tune data/ --strategy linear --trials 30 --output-dir tune")
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


cli_data.register(app)  # audit, backbones
backbones = cli_data.backbones  # medtl.cli.backbones, as before
__import__("medtl.cli_card", fromlist=["register"]).register(app)  # `medtl card` (medtl/cli_card.py)


def main() -> None:
    """The `medtl` entry point: every failure ends in one `error: ...` line on stderr and exit code 2."""
    try:
        code = app(standalone_mode=False)
    except (MedtlError, MemoryError, ImportError, RuntimeError, OSError) as exc:
        error = as_error(exc)  # a MedtlError, or memory exhausted told as one; anything else is raised again
        print(f"error: {error}", file=sys.stderr)
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        code = 130
    except typer.TyperException as exc:  # usage errors (typer's own click), e.g. an unknown option
        _usage_error(exc)
    if code == 130:  # typer turns Ctrl-C into exit code 130
        print("interrupted", file=sys.stderr)
    if isinstance(code, int) and code:
        sys.exit(code)


def _usage_error(exc: typer.TyperException) -> None:
    if type(exc).__name__ == "NoArgsIsHelpError":  # bare `medtl`: typer has already shown the help
        sys.exit(2)
    if getattr(exc, "possibilities", None):  # click's "did you mean" also offers hidden, deprecated spellings
        exc.possibilities = [p for p in exc.possibilities if p != "--out"]  # (None for an unknown short option)
    ctx = getattr(exc, "ctx", None)
    where = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
    message = " ".join(exc.format_message().split())  # one line, whatever click put in it
    print(f"error: {message}{where}", file=sys.stderr)
    sys.exit(getattr(exc, "exit_code", 2))
