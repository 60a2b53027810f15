"""`medtl study`: run a study's grid on this worker, alone or with others (lock files, or PostgreSQL); `medtl
report`: write a study's report again from its finished runs."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from medtl.cli import output as cli_output
from medtl.cli.options import setup_logging


def register(app: typer.Typer) -> None:
    app.command(name="study", epilog="Example: medtl study examples/kermany_seed_protocol.yaml --storage "
                "postgresql://medtl@db.hospital.lan/medtl_studies (on as many machines as you have)")(study)
    app.command(epilog="Example: medtl report studies/kermany_seed_protocol")(report)


def study(
    config: Path = typer.Argument(..., help="Study YAML: name, out, base (a run config), grid"),
    storage: Optional[str] = typer.Option(
        None, envvar="MEDTL_STUDY_STORAGE", show_envvar=True,
        help="postgresql://USER@HOST/DB: workers on any machines share the grid through this database (the study "
             "folder on a shared file system); without it, workers on one study folder share it by lock files"),
    lease_seconds: float = typer.Option(
        180, help="With --storage: a worker silent this long (killed, machine lost) has its run taken over"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Warnings only, no progress bars"),
) -> None:
    """Run a grid of runs (resumable; any number of workers, each run done once) and write the study report."""
    from medtl import api
    from medtl.core.logs import console

    console(quiet)
    cli_output.say(f"report: {api.study(config, progress=not quiet, storage=storage, lease_seconds=lease_seconds)}")


def report(study_dir: Path = typer.Argument(..., help="A study folder (<out>/<name>)")) -> None:
    """(Re)write a study's report from its finished runs."""
    from medtl import api

    setup_logging(False)
    cli_output.say(f"report: {api.report(study_dir)}")
