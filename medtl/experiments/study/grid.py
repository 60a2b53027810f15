"""A study: a grid of runs (backbones x strategies x learning rates x seeds) on one data set, resumable.

Each run is a normal run folder under `<out>/<name>/runs/<run>`; a run counts as done when its
`metrics.json` exists (written last), so a killed study restarts where it stopped: finished runs are kept,
an unfinished folder is removed and its run redone from the start. Workers take grid points from a queue
(queue.py: lock files in the study folder, or PostgreSQL), and only the worker holding a point's claim
clears and runs its folder.
"""

from __future__ import annotations

import itertools
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import yaml
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from medtl.models.backbones import get_spec, weights_available_offline
from medtl.core.config import RunConfig, apply_overrides, dotted_key, run_config_from, to_dict
from medtl.core.config.values import dotted_value
from medtl.core.config.yaml_io import parse_yaml
from medtl.core.errors import Interrupted, MedtlError
from medtl.core.io import atomic_write, write_json
from medtl.core.logs import on_terminal
from medtl.core.runfolder import StudyFolder
from medtl.experiments.study.queue import (DONE, FAILED, LEASE_SECONDS, PENDING, Claim, LocalQueue, Queue, digest,
                                           worker_id)

log = logging.getLogger(__name__)

KEYS = ("name", "out", "base", "grid", "exclude", "compare_to")
SHORT = {"model.backbone": "", "model.strategy": "", "train.lr": "lr", "train.seed": "s"}


@dataclass
class Study:
    name: str
    base: RunConfig
    grid: dict[str, list[Any]]  # dotted key -> values, in the order given
    out: Path
    exclude: list[dict[str, Any]] = field(default_factory=list)  # grid points to leave out (dotted key -> value)
    compare_to: dict[str, Any] | None = None  # the reference configuration the report tests against (None: scratch)
    skipped: list[str] = field(default_factory=list)  # runs left out, with why

    @property
    def root(self) -> Path:
        return self.out / self.name

    def runs(self) -> list[tuple[str, RunConfig]]:
        """(run name, config) for every grid point, in a fixed order; transfer runs without offline weights
        are left out (and listed in `skipped`)."""
        keys = list(self.grid)
        planned, self.skipped = [], []
        for values in itertools.product(*(self.grid[k] for k in keys)):
            point = dict(zip(keys, values))
            if any(all(str(point.get(k)) == str(v) for k, v in rule.items()) for rule in self.exclude):
                continue
            cfg = apply_overrides(self.base, {k: str(v) for k, v in point.items()})
            get_spec(cfg.model.backbone)  # an unknown name fails now, with the close names
            name = run_name(point)
            reason = _unavailable(cfg)
            if reason:
                self.skipped.append(f"{name}: {reason}")
                continue
            planned.append((name, apply_overrides(cfg, {"out": str(self.root / "runs"), "name": name})))
        return planned


def run_name(point: dict[str, Any]) -> str:
    parts = []
    for key, value in point.items():
        prefix = SHORT.get(key, key.split(".")[-1] + "=")
        parts.append(f"{prefix}{value:g}" if isinstance(value, float) else f"{prefix}{value}")
    return "-".join(parts).replace("/", "_")


def _unavailable(cfg: RunConfig) -> str:
    if not cfg.model.strategy_spec.pretrained or cfg.model.weights not in ("default", "imagenet",
                                                                                     "package"):
        return ""  # scratch needs no weights; a path is checked when the run starts
    spec = get_spec(cfg.model.backbone)
    if weights_available_offline(spec):
        return ""
    return (f"no offline weights for {spec.name}; give them by path in the study's grid (weights: [PATH]) "
            "to run transfer")


def load_study(path: str | Path) -> Study:
    """Read a study YAML: name, out, base (a run config), grid (key -> list of values), exclude (grid points)."""
    path = Path(path)
    return _parse(path, _read_yaml(path), KEYS)


def load_written(study_root: str | Path) -> Study:
    """The study.yaml that `medtl study` wrote into a study folder, checked as `load_study` checks a study file
    (its `out` is the folder's parent; `skipped` lists the runs left out)."""
    root = Path(study_root)
    spec = StudyFolder(root).spec
    data = _read_yaml(spec)
    skipped = data.get("skipped") or []
    if not isinstance(skipped, list) or not all(isinstance(s, str) for s in skipped):
        raise MedtlError(f"{spec}: skipped must be a list of lines, not {_kind(skipped)}; run `medtl study CONFIG` "
                         "again to rewrite it")
    study = _parse(spec, {**data, "out": str(root.parent)}, KEYS + ("skipped",))
    study.skipped = skipped
    return study


def _parse(path: Path, data: dict, keys: tuple[str, ...]) -> Study:
    unknown = set(data) - set(keys)
    if unknown:
        raise MedtlError(f"{path}: unknown keys {sorted(map(str, unknown))}; valid: {', '.join(keys)}")
    grid = {}
    for key, values in _mapping(path, data, "grid", "grid: {backbone: [resnet18], seed: [0, 1]}").items():
        if not isinstance(values, list) or not values:
            raise MedtlError(f"{path}: grid.{key} must be a non-empty list, e.g. {key}: [a, b]")
        grid[_key(path, key, "grid")] = values
    if not grid:
        raise MedtlError(f"{path}: the grid is empty; e.g. grid: {{backbone: [efficientnet_lite0], seed: [0, 1]}}")
    base = run_config_from(_mapping(path, data, "base", "base: {epochs: 10, image_size: 224}"), f"{path}:base")
    exclude = _exclude(path, data.get("exclude"), grid)
    for key in ("name", "out"):
        if not isinstance(data.get(key), (str, int, float, type(None))) or isinstance(data.get(key), bool):
            raise MedtlError(f"{path}: {key} must be a plain name, not {_kind(data[key])}; e.g. {key}: kermany")
    study = Study(str(data.get("name") or path.stem), base, grid, Path(str(data.get("out") or "studies")), exclude)
    try:
        study.runs()  # validates every grid value against the config now, before anything runs
    except MedtlError as exc:
        if str(exc).startswith(str(path)):
            raise
        raise MedtlError(f"{path}: {exc}") from exc
    study.compare_to = _compare_to(path, data.get("compare_to"), grid, base)
    if study.compare_to and not any(all(_value_of(cfg, k) == v for k, v in study.compare_to.items())
                                    for _, cfg in study.runs()):
        rule = ", ".join(f"{k}={v}" for k, v in study.compare_to.items())
        raise MedtlError(f"{path}: compare_to {rule} matches no run of the grid (left out by exclude?); name a grid "
                         "point that runs")
    return study


def _read_yaml(path: Path) -> dict:
    """The file's top-level mapping; syntax errors as one line with the line and column."""
    if not path.is_file():
        raise MedtlError(f"study file {path} not found; see examples/kermany_seed_protocol.yaml")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise MedtlError(f"{path} is not a UTF-8 text file ({exc.reason} at byte {exc.start}); save the study "
                         "as plain YAML text") from exc
    data = parse_yaml(text, str(path))  # the config's hardened loader: no aliases, tags or deep nesting
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise MedtlError(f"{path}: the top level is {_kind(data)}; a study is a mapping with keys name, out, base, "
                         "grid, exclude (see examples/kermany_seed_protocol.yaml)")
    return data


def _kind(value: Any) -> str:
    return f"a {type(value).__name__.replace('dict', 'mapping').replace('NoneType', 'null')} ({str(value)[:40]!r})"


def _mapping(path: Path, data: dict, key: str, example: str) -> dict:
    value = data.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise MedtlError(f"{path}: {key} must be a mapping, not {_kind(value)}; e.g. {example}")
    return value


def _key(path: Path, key: Any, where: str) -> str:
    """A grid or exclude key as a dotted config key; an unknown one names the file."""
    if not isinstance(key, str):
        raise MedtlError(f"{path}: {where} key {key!r} is not a setting name; use names such as backbone or train.lr")
    try:
        return dotted_key(key)
    except MedtlError as exc:
        raise MedtlError(f"{path}: {where}: {exc}") from exc


def _exclude(path: Path, rules: Any, grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    if rules is None:
        return []
    example = "exclude: [{backbone: resnet18, strategy: scratch}]"
    if not isinstance(rules, list) or not all(isinstance(r, dict) for r in rules):
        raise MedtlError(f"{path}: exclude must be a list of mappings (grid key -> value), not {_kind(rules)}; "
                         f"e.g. {example}")
    exclude = [{_key(path, k, "exclude"): v for k, v in rule.items()} for rule in rules]
    for rule in exclude:
        if set(rule) - set(grid):
            raise MedtlError(f"{path}: exclude rule {rule} names keys outside the grid ({', '.join(grid)})")
    return exclude


def _compare_to(path: Path, rule: Any, grid: dict[str, list[Any]], base: RunConfig) -> dict[str, str] | None:
    """The reference grid point (dotted key -> the value as a run's config holds it, so 0 and 0.0 or 1e-3 and
    0.001 match), every key a grid key and every value one of its values."""
    if rule is None:
        return None
    if not isinstance(rule, dict) or not rule:
        raise MedtlError(f"{path}: compare_to must be a mapping of grid keys to values, not {_kind(rule)}; "
                         "e.g. compare_to: {strategy: scratch}")
    out = {}
    for key, value in ((_key(path, k, "compare_to"), v) for k, v in rule.items()):
        if key not in grid:
            raise MedtlError(f"{path}: compare_to names {key}, which is not in the grid ({', '.join(grid)}); "
                             "name grid keys only")
        try:
            out[key] = _resolved(base, key, value)
        except MedtlError:
            out[key] = None
        if out[key] not in [_resolved(base, key, v) for v in grid[key]]:
            raise MedtlError(f"{path}: compare_to {key}={value} is not a grid value; choose from "
                             f"{', '.join(map(str, grid[key]))}")
    return out


def _resolved(base: RunConfig, key: str, value: Any) -> str:
    """`value` of the dotted `key` as a run's config holds it, as text (as the report reads runs' configs)."""
    return _value_of(apply_overrides(base, {key: str(value)}), key)


def _value_of(cfg: RunConfig, key: str) -> str:
    """The value of the dotted `key` in `cfg`, as text (as the report reads it from a run's config.yaml)."""
    return str(dotted_value(to_dict(cfg), key))


def write_spec(study: Study) -> StudyFolder:
    """The study folder, with its study.yaml (what `load_written` reads back for `medtl report`)."""
    study.root.mkdir(parents=True, exist_ok=True)
    folder = StudyFolder(study.root)
    atomic_write(folder.spec, yaml.safe_dump(
        {"name": study.name, "base": to_dict(study.base), "grid": study.grid, "exclude": study.exclude,
         "compare_to": study.compare_to, "skipped": study.skipped},
        sort_keys=False))
    return folder


def run_study(study: Study, progress: bool = True, queue: Queue | None = None) -> list[Path]:
    """Run the grid points not yet done that this worker claims from `queue` (default: lock files in the study
    folder, so two workers on one folder never take one point); returns the run folders in grid order."""
    from medtl.training.run import run

    planned = study.runs()
    folder = write_spec(study)
    queue = queue or LocalQueue(folder.path)
    for line in study.skipped:
        log.warning("study %s: skipped %s", study.name, line)
    configs = dict(planned)
    key = digest({"base": to_dict(study.base), "grid": study.grid, "exclude": study.exclude})
    queue.register(list(configs), key, lambda name: folder.run(name).finished)
    parents = _tracker_parents(study, queue, planned, key)
    todo = [n for n in configs if not folder.run(n).finished]
    log.info("study %s: %d runs, %d done, %d to run", study.name, len(planned), len(planned) - len(todo), len(todo))
    columns = [TextColumn("study {task.fields[name]}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("ETA"), TimeRemainingColumn(), TextColumn("{task.fields[current]}")]
    with Progress(*columns, disable=not (progress and on_terminal()), transient=False) as bar:
        task = bar.add_task("runs", total=len(todo), name=study.name, current="")
        try:
            while (claim := queue.next()) is not None:
                bar.update(task, current=claim.name)
                _run_point(study, folder, queue, claim, configs[claim.name], partial(run, parents=parents))
                bar.advance(task)
        finally:
            queue.close()
    return [folder.run(n).path for n, _ in planned]


def _tracker_parents(study: Study, queue: Queue, planned: list[tuple[str, RunConfig]], key: str) -> dict[str, str]:
    """The tracker run (MLflow's) each point is nested under, by kind: the study's, found or made by one
    worker at a time, its record in the study folder's tracking.json."""
    if not planned or not planned[0][1].runtime.track:
        return {}
    from medtl.training import tracking

    with queue.exclusive():
        records = tracking.open_study(planned[0][1], study.name, key)
    if records:
        write_json(StudyFolder(study.root).tracking, records)
    return {kind: record["run_id"] for kind, record in records.items()}


def _run_point(study: Study, folder: StudyFolder, queue: Queue, claim: Claim, cfg: RunConfig, run) -> None:
    """Run one claimed point: only the worker that holds the claim clears an unfinished run folder."""
    if folder.run(claim.name).finished:  # finished by a worker the queue did not hear of (a study without it)
        queue.finish(claim, DONE)
        return
    run_folder = folder.run(claim.name).path
    if run_folder.exists():  # an unfinished run from a killed worker: start it again, from scratch
        shutil.rmtree(run_folder)
    after = f", taken over from {claim.taken_from}" if claim.taken_from else ""
    log.info("study %s: %s started by %s (attempt %d%s)", study.name, claim.name, worker_id(), claim.attempt, after)
    start = time.perf_counter()
    try:
        with queue.running(claim):
            run(cfg, progress=False, on_epoch=claim.check)
    except (Interrupted, KeyboardInterrupt, SystemExit):  # Ctrl-C: the point goes back to the queue at once
        queue.finish(claim, PENDING)
        raise
    except Exception as exc:
        queue.finish(claim, FAILED, f"{type(exc).__name__}: {exc}")
        raise
    queue.finish(claim, DONE)
    log.info("study %s: %s done in %.0f s", study.name, claim.name, time.perf_counter() - start)


def open_queue(root: Path, name: str, storage: str | None, lease_seconds: float = LEASE_SECONDS) -> Queue:
    """Lock files in the study folder, or the study's rows in the database at `storage`."""
    if storage is None:
        return LocalQueue(root)
    from medtl.experiments.study.postgres import PostgresQueue  # SQLAlchemy only when a database is named

    return PostgresQueue(storage, name, lease_seconds)


def run_and_report(study: Study, command: str = "", progress: bool = True, storage: str | None = None,
                   lease_seconds: float = LEASE_SECONDS) -> Path:
    """This worker's share of the study, then the report if it is this worker's to write (locally: every
    worker's, when it leaves; with `storage`: the worker that finished the last point); returns report.html."""
    from medtl.experiments.study.report import write_report

    queue = open_queue(study.root, study.name, storage, lease_seconds)
    run_study(study, progress, queue)
    for point, worker, error in queue.failed():
        log.warning("study %s: %s failed on %s: %s (a new worker retries it)", study.name, point, worker, error)
    if not queue.report_due:
        log.info("study %s: nothing left for this worker; the worker that finishes the last run writes the report "
                 "(or `medtl report %s`)", study.name, study.root)
        return StudyFolder(study.root).path / "report.html"
    with queue.exclusive():
        report = write_report(study.root, command)
    _end_tracking(StudyFolder(study.root))
    return report


def _end_tracking(folder: StudyFolder) -> None:
    """The report added to the study's tracker run (when its points were tracked), which is then finished."""
    if folder.tracking.is_file():
        from medtl.training import tracking

        records = json.loads(folder.tracking.read_text())
        tracking.end_study(records, [p for p in (folder.path / "report.html", folder.path / "report.csv",
                                                 folder.path / "report.md") if p.is_file()])
