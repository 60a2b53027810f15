"""Options that commands in more than one cli module share, defined once, and how a deprecated spelling of an
option is taken."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from medtl.core.config import ENGINES
from medtl.core.errors import MedtlError

log = logging.getLogger("medtl.cli")  # the deprecation notices keep the logger they were logged on

Sets = Annotated[Optional[list[str]], typer.Option("--set", help="Any config value, e.g. --set train.lr=0.01 "
                                                   "(repeatable)")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Warnings only, no progress bars")]
RevealIds = Annotated[bool, typer.Option("--reveal-ids", help="Write patient IDs in clear in every output (default: "
                                         "keyed pseudonyms); recorded")]
RunDir = Annotated[Path, typer.Argument(help="Run folder written by `medtl train`")]
Engine = Annotated[str, typer.Option(help=f"{' | '.join(ENGINES)}: what runs the network (auto: the "
                                          "fastest measured here; an engine is checked against PyTorch first)")]
Coverage = Annotated[float, typer.Option(help="Referral: images whose conformal prediction set at this coverage "
                                         "(calibrated on validation) is not the predicted class alone are 'refer'")]
# the spelling before output options were named one way; hidden, accepted with a deprecation notice
OldOut = Annotated[Optional[Path], typer.Option("--out", hidden=True, help="Deprecated: use --output-dir")]


def setup_logging(quiet: bool) -> None:
    from medtl.core.logs import console as to_console

    to_console(quiet)


def renamed(new: Any, old: Any, old_flag: str, new_flag: str, notify: bool = True) -> Any:
    """The value of an option given under its new or its deprecated spelling (not both); `notify=False` on
    the other processes of a torchrun job, so the notice is logged once."""
    if old is None:
        return new
    if new is not None:
        raise MedtlError(f"{old_flag} and {new_flag} both given; pass only {new_flag}")
    if notify:
        log.warning("%s is deprecated; use %s (same meaning)", old_flag, new_flag)
    return old
