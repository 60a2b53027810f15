"""The `medtl` command line: a thin layer over the library. Bad input exits 2 with one line.

Naming: an option that names a file the command writes is `--output/-o FILE`; one that names a folder is
`--output-dir/-o DIR`. Old spellings still work for now and log a one-line deprecation notice.
"""

from __future__ import annotations

import sys

import typer

from medtl import __version__
from medtl.cli import card as cli_card
from medtl.cli import data as cli_data
from medtl.cli import deploy as cli_deploy
from medtl.cli import evaluate as cli_evaluate
from medtl.cli import study as cli_study
from medtl.cli import train as cli_train
from medtl.core.errors import MedtlError
from medtl.core.faults import as_error

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Transfer learning for medical images: train, evaluate, compare backbones.",
                  epilog="Example: medtl train data/ --strategy linear --output-dir runs")


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


cli_train.register(app)  # train, tune (medtl/cli/train.py)
cli_evaluate.register(app)  # evaluate, calibrate
cli_deploy.register(app)  # predict, explain, export, serve
cli_study.register(app)  # study, report
cli_data.register(app)  # audit, backbones
cli_card.register(app)  # card
backbones = cli_data.backbones  # medtl.cli.backbones, as before


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
