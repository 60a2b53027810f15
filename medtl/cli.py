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
from medtl.core.config import ENGINES, STRATEGIES
from medtl.core.errors import MedtlError
from medtl.core.faults import as_error
from medtl import cli_evaluate, cli_output, cli_study

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Transfer learning for medical images: train, evaluate, compare backbones.",
                  epilog="Example: medtl train data/ --strategy linear --output-dir runs")
log = logging.getLogger(__name__)

# the CLI's vocabulary: each flag of train and tune -> the dotted config key it sets (--set takes dotted keys)
FLAGS = {"backbone": "model.backbone", "strategy": "model.strategy", "weights": "model.weights",
         "epochs": "train.epochs", "image_size": "data.image_size", "channels": "data.channels",
         "seed": "train.seed", "budget": "train.budget", "output_dir": "out", "name": "name", "strict": "data.strict"}


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
Sets = Annotated[Optional[list[str]], typer.Option("--set", help="Any config value, e.g. --set train.lr=0.01 "
                                                   "(repeatable)")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Warnings only, no progress bars")]
RunDir = Annotated[Path, typer.Argument(help="Run folder written by `medtl train`")]
Engine = Annotated[str, typer.Option(help=f"{' | '.join(ENGINES)}: what runs the network (auto: the "
                                          "fastest measured here; an engine is checked against PyTorch first)")]
Coverage = Annotated[float, typer.Option(help="Referral: images whose conformal prediction set at this coverage "
                                         "(calibrated on validation) is not the predicted class alone are 'refer'")]
# the spelling before output options were named one way; hidden, accepted with a deprecation notice
OldOut = Annotated[Optional[Path], typer.Option("--out", hidden=True, help="Deprecated: use --output-dir")]


def _setup_logging(quiet: bool) -> None:
    from medtl.core.logs import console as to_console

    to_console(quiet)


def _renamed(new: Any, old: Any, old_flag: str, new_flag: str, notify: bool = True) -> Any:
    """The value of an option given under its new or its deprecated spelling (not both); `notify=False` on
    the other processes of a torchrun job, so the notice is logged once."""
    if old is None:
        return new
    if new is not None:
        raise MedtlError(f"{old_flag} and {new_flag} both given; pass only {new_flag}")
    if notify:
        log.warning("%s is deprecated; use %s (same meaning)", old_flag, new_flag)
    return old


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
                       "output_dir": output_dir, "name": name, "strict": True if strict else None}, set_)
    with redirect_bars():
        result = api.train(data, config=config, resume=resume, progress=not quiet, **flags)
    if main_process:
        cli_output.say(f"run folder: {result.path}")
        cli_output.print_metrics(result.metrics)


cli_evaluate.register(app)  # evaluate, calibrate


@app.command(epilog="Example: medtl predict runs/first new_xrays/ scan.dcm --output predictions.csv")
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
    from medtl.deploy.predictor import trust_summary

    _setup_logging(quiet)
    run = api.Run.load(run_dir)
    rows = run.predict(paths, batch_size, progress=not quiet, engine=engine, coverage=coverage)
    rows.to_csv(output)
    counts = {c: sum(r["predicted"] == c for r in rows) for c in run.predictor.classes}
    cli_output.say(f"{len(rows)} images scored ({', '.join(f'{c} {n}' for c, n in counts.items())}) -> {output}")
    cli_output.say(trust_summary(rows, coverage))
    cli_output.list_failures(rows.failed)


@app.command(epilog="Example: medtl explain runs/first xray1.png xray2.png --output-dir cams")
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


@app.command(epilog="Example: medtl export runs/first --format onnx --image test_xrays/ --output model.onnx")
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


@app.command(epilog="Example: medtl serve runs/first --port 8000   # then open http://127.0.0.1:8000/")
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


@app.command(epilog="Example: medtl audit data/ --output audit.json")
def audit(
    data: str = typer.Argument(..., help="Data as `medtl train` takes it"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write the full audit as JSON here"),
    perceptual: bool = typer.Option(True, help="Also look for near-duplicates (perceptual hash)"),
    target_width: Optional[float] = typer.Option(None, help="Say how many test images a 95% interval this wide "
                                                 "needs (sensitivity, specificity, AUC), e.g. 0.05"),
    set_: Sets = None,
) -> None:
    """Duplicates within and across splits, unreadable files, class balance, class-correlated properties, and
    whether the test split is large enough."""
    from medtl import api
    from medtl.core.config import parse_set
    from medtl.data.audit import warnings_for
    from medtl.evaluation.sample_size import describe_split

    _setup_logging(False)
    report_ = api.audit(data, perceptual, output, target_width, **parse_set(set_ or []))
    cli_output.print_audit(report_)
    for line in describe_split(report_.get("sample_size")):
        cli_output.say(line)
    for line in warnings_for(report_):
        cli_output.console.print(f"[yellow]warning:[/yellow] {line}", soft_wrap=True)


@app.command(epilog="Example: medtl backbones | grep yes   # the backbones whose weights load offline")
def backbones() -> None:
    """List the backbones: parameters, input size, feature dim, default weights, and whether they load offline."""
    import torch

    from medtl.models.backbones import BACKBONES, offline_sources

    rows = []
    for spec in BACKBONES.values():
        with torch.device("meta"):  # shapes only: counting parameters needs no memory and no init time
            params = sum(p.numel() for p in spec.builder().parameters()) / 1e6
        rows.append([spec.name, f"{params:.1f}", str(spec.input_size), str(spec.feature_dim), spec.default_weights,
                     " + ".join(offline_sources(spec)) or "no"])
    hints = [f"{s.name}: `{s.package_install}`" for s in BACKBONES.values() if s.package_install]
    header = ["name", "params M", "input px", "features", "weights", "offline from"]
    cli_output.show_table("medtl backbones", header, rows,
                          caption="offline from 'no': copy torchvision's file into $TORCH_HOME/hub/checkpoints, pass "
                                  "--weights PATH, or train --strategy scratch; optional packages: " + "; ".join(hints))


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
    if hasattr(exc, "possibilities"):  # click's "did you mean" also offers hidden, deprecated spellings
        exc.possibilities = [p for p in exc.possibilities if p != "--out"]
    ctx = getattr(exc, "ctx", None)
    where = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
    message = " ".join(exc.format_message().split())  # one line, whatever click put in it
    print(f"error: {message}{where}", file=sys.stderr)
    sys.exit(getattr(exc, "exit_code", 2))
