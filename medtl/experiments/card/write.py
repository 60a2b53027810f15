"""`medtl card`: a model card (model_card.md and .html) and the CLAIM 2024 and TRIPOD+AI checklists, written
from a run folder's records, or for a study from its selected run and its report.

    write_card("runs/first", intended="card.yaml")        # -> {"card_md": ..., "card_html": ..., ...}
    write_template("runs/first")                           # -> runs/first/card.yaml to fill in
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from medtl.core.errors import MedtlError
from medtl.core.io import atomic_write, make_dir
from medtl.training import tracking
from medtl.core.runfolder import RunFolder, StudyFolder
from medtl.experiments.card.checklists import checklists_section, write_checklists
from medtl.experiments.card.facts import RunFacts, run_facts
from medtl.experiments.card.render import Section, html_page, markdown
from medtl.experiments.card.sections import data_sections, model_sections, num, results_sections
from medtl.evaluation.records import RunMetrics
from medtl.experiments.card.text import (DEFAULT_WIDTH, TEMPLATE, external_sections, intended_sections,
                                         limitations, load_intended, reproduce, sample_size)

CARD = "model_card"
TEMPLATE_NAME = "card.yaml"


def write_template(folder: str | Path, output: str | Path | None = None) -> Path:
    """The intended-use file to fill in (card.yaml in the run or study folder); an existing one is kept."""
    path = Path(output) if output else _target(folder).path / TEMPLATE_NAME
    if path.exists():
        raise MedtlError(f"{path} exists; edit it and pass it with --intended-use {path}, or delete it for a fresh "
                         "template")
    return atomic_write(path, TEMPLATE)


def write_card(folder: str | Path, intended: str | Path | None = None, evaluations=(),
               output_dir: str | Path | None = None, rescan: bool = True,
               target_width: float = DEFAULT_WIDTH) -> dict[str, Path]:
    """model_card.md, model_card.html and checklist_{claim,tripod_ai}.{md,csv} for the run (or study) in
    `folder`; returns {name: path}."""
    if not (0 < target_width < 1):
        raise MedtlError(f"--target-width {target_width}: pass a 95 % interval width between 0 and 1, e.g. 0.1")
    answers = load_intended(intended)
    target = _target(folder)
    if isinstance(target, StudyFolder):
        title, intro, sections = study_card(target, answers, list(evaluations), rescan, target_width)
    else:
        facts = run_facts(target.path, list(evaluations), rescan)
        title = answers.get("title") or f"Model card: {target.path.name}"
        intro = f"Written by medtl from the records of the run in {target.path}."
        sections = card_sections(facts, answers, target_width)
    sections = [*sections, checklists_section()]
    out = make_dir(output_dir or target.path)
    written = {"card_md": atomic_write(out / f"{CARD}.md", markdown(title, intro, sections)),
               "card_html": atomic_write(out / f"{CARD}.html", html_page(title, intro, sections))}
    for path in write_checklists(out, sections, f"{CARD}.md"):
        written[path.stem + path.suffix.replace(".", "_")] = path
    if isinstance(target, RunFolder) and target.tracking.is_file():  # a --track run: the card goes there too
        tracking.attach(target, list(written.values()), "card")
    return written


def _target(folder: str | Path) -> RunFolder | StudyFolder:
    study = StudyFolder(folder)
    if study.spec.is_file():
        return study
    run = RunFolder(folder)
    if not Path(folder).is_dir():
        raise MedtlError(f"{folder} is not a folder; pass a run folder (`medtl train`) or a study folder "
                         "(`medtl study`)")
    return run


def card_sections(f: RunFacts, answers: dict[str, str], target_width: float,
                  extra: list[Section] = ()) -> list[Section]:
    """Every section of a run's card, in reading order; `extra` (a study's) follows the model selection."""
    model = model_sections(f)
    return [*intended_sections(answers), *data_sections(f), sample_size(f, target_width), *model, *extra,
            *results_sections(f), *external_sections(f), limitations(f, target_width), reproduce(f)]


def study_card(study: StudyFolder, answers: dict[str, str], evaluations: list, rescan: bool,
               target_width: float) -> tuple[str, str, list[Section]]:
    """The card of a study's selected run (best validation AUC; test not looked at), with the study's table."""
    chosen, table = select_run(study)
    facts = run_facts(chosen.path, evaluations, rescan)
    name = study.path.name
    section = Section("study", f"Study {name}: every configuration")
    section.p(f"The model described here is the run {chosen.path.name}: the highest validation AUC of the "
              f"{len(table)} finished runs (ties: the lower validation loss); the test split played no part in "
              "the choice.")
    section.table(["run", "validation AUC", "validation loss", "test AUC"], table)
    report = study.path / "report.csv"
    if report.is_file():
        with open(report, newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
        if rows:
            section.p(f"The study report ({report.name}; paired tests in report.md) by configuration:")
            section.table(rows[0], rows[1:])
    title = answers.get("title") or f"Model card: study {name} (run {chosen.path.name})"
    intro = f"Written by medtl from the study in {study.path} and the records of its selected run."
    return title, intro, card_sections(facts, answers, target_width, [section])


def select_run(study: StudyFolder) -> tuple[RunFolder, list[list[str]]]:
    """The finished run with the best validation AUC, and one row per finished run."""
    runs = [RunFolder(p) for p in sorted(study.runs.iterdir())] if study.runs.is_dir() else []
    scored = []
    for run in (r for r in runs if r.finished):
        splits = RunMetrics.of_run(run).splits
        val, test = splits.get("val") or {}, splits.get("test") or {}
        scored.append((run, _num(val.get("auc")), _num(val.get("loss")), test.get("auc")))
    if not scored:
        raise MedtlError(f"{study.path} has no finished runs; run `medtl study {study.spec}` first")
    best = max(scored, key=lambda r: (-math.inf if math.isnan(r[1]) else r[1],
                                      -(math.inf if math.isnan(r[2]) else r[2])))
    rows = [[r.path.name, num(auc), num(loss), num(test)] for r, auc, loss, test in scored]
    return best[0], rows


def _num(value) -> float:
    return math.nan if value is None else float(value)
