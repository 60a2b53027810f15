"""`medtl card`: the model card and the reporting checklists of a run or a study."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    app.command(epilog="Example: medtl card runs/first --intended-use card.yaml --evaluation other_hospital_eval")(card)


def card(
    folder: Path = typer.Argument(..., help="A run folder (`medtl train`) or a study folder (`medtl study`)"),
    intended_use: Optional[Path] = typer.Option(None, "--intended-use", help="YAML with the intended use, users, "
                                                "population, ... (write one with --template)"),
    evaluation: Optional[list[Path]] = typer.Option(None, "--evaluation", help="A folder with the metrics.json of "
                                                    "an external evaluation (repeatable)"),
    template: bool = typer.Option(False, "--template", help="Write card.yaml to fill in, in FOLDER, and stop"),
    output_dir: Optional[Path] = typer.Option(None, "--output-dir", "-o", help="Where to write (default: FOLDER)"),
    data: bool = typer.Option(True, "--data/--no-data", help="Read the data again for counts, patients and "
                              "near copies (off: the run's records only)"),
    target_width: float = typer.Option(0.1, help="95 % interval width a test split is held to"),
) -> None:
    """Write model_card.md/.html and the CLAIM 2024 and TRIPOD+AI checklists (Markdown and CSV)."""
    from medtl import api
    from medtl.cli import output as cli_output

    if template:
        cli_output.say(f"template: {api.card_template(folder)} (fill it in, then pass --intended-use)")
        return
    written = api.card(folder, intended_use=intended_use, evaluations=evaluation or [], output_dir=output_dir,
                       rescan=data, target_width=target_width)
    for path in written.values():
        cli_output.say(f"wrote {path}")
