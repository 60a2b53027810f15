"""The research side of the Python API: studies and their reports, hyperparameter search, data audits and
model cards (re-exported by `medtl.api`, where the rest of the API lives)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from medtl.core.config import make_config
from medtl.core.errors import MedtlError
from medtl.core.runfolder import StudyFolder

if TYPE_CHECKING:
    import optuna

    from medtl.data.audit import AuditReport

PathLike = str | Path


def study(spec: PathLike, progress: bool = False, storage: str | None = None, lease_seconds: float = 180) -> Path:
    """Run a study's grid (finished runs are kept) and write its report.

    Args:
        spec: The study YAML: name, out, base (a run config), grid (dotted key -> values), exclude,
            compare_to.
        progress: Show a bar over the grid's runs.
        storage: A PostgreSQL URL (postgresql://...): this process is one of any number of workers sharing the
            grid through the database, and the worker that finishes the last run writes the report. None: the
            workers on one study folder share it by lock files.
        lease_seconds: How long a silent worker's run waits before another worker takes it over.

    Returns:
        The report's report.html (written once every point is done).

    Raises:
        MedtlError: A bad study file, or a grid point whose config is invalid (before any run starts).
    """
    from medtl.experiments.study.grid import load_study, run_and_report

    loaded = load_study(spec)
    return run_and_report(loaded, f"medtl study {spec}", progress, storage, lease_seconds)


def report(study_dir: PathLike) -> Path:
    """(Re)write a study's report from its finished runs.

    Args:
        study_dir: A study folder written by `medtl study` (`<out>/<name>`).

    Returns:
        The report's report.html (with report.md, report.csv and figures/ beside it).
    """
    from medtl.experiments.study.report import write_report
    from medtl.experiments.study.grid import load_written

    folder = StudyFolder(study_dir)
    if not folder.spec.is_file():
        raise MedtlError(f"{study_dir} has no {folder.spec.name}; pass the folder `medtl study` wrote (<out>/<name>)")
    load_written(folder.path)  # checked as `medtl study` checks its file: a damaged study.yaml is one line
    return write_report(folder.path)


def audit(data: PathLike, perceptual: bool = True, output: PathLike | None = None,
          target_width: float | None = None, **settings: Any) -> "AuditReport":
    """Audit a data set before training on it.

    Each image's facts are kept in medtl's cache folder (data/facts_cache.py), so a later `train` on the same
    files reads none of them again.

    Args:
        data: Data in any layout `train` takes.
        perceptual: Also find near duplicates by perceptual hash (exact copies are always found).
        output: Also write the report as JSON to this file.
        target_width: The 95 % interval width the test split should reach: the report then says how many
            test images that needs.
        **settings: Data settings such as `val_fraction` (the splits are made as `train` would make them).

    Returns:
        The `AuditReport`: class balance, unreadable files, exact and near duplicates within and across splits,
        class-correlated properties (shortcuts), patients, and `sample_size` (expected 95 % interval widths)
        when the data have a test split; `report["unreadable"]` reads its JSON keys too.
    """
    from medtl.core.io import write_json
    from medtl.data import facts_cache
    from medtl.data.audit import audit as run_audit
    from medtl.data.sources import discover
    from medtl.evaluation.sample_size import for_labels

    cfg = make_config(data, **settings)
    facts_cache.use_cache_root(cfg.cache.dir)  # what `medtl train` on the same data reads again
    splits = discover(cfg.data, cfg.data.split_seed)
    result = run_audit(splits, perceptual)
    if "test" in splits.labels:
        result = result.with_sample_size(for_labels(splits.labels["test"], splits.classes, target_width))
    if output is not None:
        write_json(output, result.to_dict())
    return result


def tune(data: PathLike, trials: int = 20, out: PathLike = "tune", storage: str | None = None,
         study_name: str = "medtl", config: PathLike | None = None, **settings: Any) -> "optuna.Study":
    """Search the hyperparameters of one run with Optuna (TPE sampling, median pruning on validation AUC).

    Args:
        data: Data in any layout `train` takes.
        trials: Trials for this process (workers sharing `storage` add up).
        out: The folder for the trials' run folders (and tune.db by default).
        storage: An Optuna storage URL (default sqlite:///OUT/tune.db); share one, e.g. postgresql://...,
            between workers.
        study_name: The study's name in the storage.
        config: A YAML run config the other settings override.
        **settings: Any run setting, as `train` takes them.

    Returns:
        The `optuna.Study`, its best trial chosen on validation.
    """
    from medtl.experiments.tune import tune as run_tune

    base = make_config(data, config=config, **settings)
    return run_tune(base, trials, Path(out), storage, study_name)


def card(run_or_study: PathLike, intended_use: PathLike | None = None, evaluations: Sequence[PathLike] = (),
         output_dir: PathLike | None = None, rescan: bool = True, target_width: float = 0.1) -> dict[str, Path]:
    """A model card and the CLAIM 2024 and TRIPOD+AI checklists, from a run's (or a study's) records.

    Args:
        run_or_study: A run folder, or a study folder (its run with the best validation AUC, and its report).
        intended_use: YAML with the intended use, users, population, reference standard, ethics, funding
            (`card_template` writes one); what is missing shows as "for the authors: ...".
        evaluations: Folders (or files) holding the metrics.json of external evaluations.
        output_dir: Where to write (default: the run or study folder).
        rescan: Read the data again for counts per split and class, patients and near copies.
        target_width: The 95 % interval width the card holds the test split to.

    Returns:
        {"card_md", "card_html", "checklist_claim_md", ...: path}.
    """
    from medtl.experiments.card.write import write_card

    return write_card(run_or_study, intended_use, list(evaluations), output_dir, rescan, target_width)


def card_template(run_or_study: PathLike, output: PathLike | None = None) -> Path:
    """Write card.yaml, the intended-use file a model card reads, to fill in; an existing file is kept.

    Args:
        run_or_study: A run folder, or a study folder.
        output: Where to write it (default: card.yaml in that folder).

    Returns:
        The file.
    """
    from medtl.experiments.card.write import write_template

    return write_template(run_or_study, output)
