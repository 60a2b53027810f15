"""Where trackers are opened, closed and reopened: the one place that knows each tracker's module."""

from __future__ import annotations

import importlib.util
import json
import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Mapping

from medtl.core.config import RunConfig
from medtl.core.errors import MedtlError
from medtl.core.io import write_json
from medtl.core.runfolder import RunFolder
from medtl.training.tracking.base import Tracker, Trackers
from medtl.training.tracking.to_mlflow import MlflowTracker, end_study_run, study_run
from medtl.training.tracking.to_tensorboard import TensorBoardTracker

log = logging.getLogger(__name__)

PACKAGES = {"mlflow": "mlflow", "tensorboard": "tensorboard"}  # what each kind imports
KINDS = {"mlflow": MlflowTracker, "tensorboard": TensorBoardTracker}


def require(cfg: RunConfig) -> None:
    """Before anything is written: every tracker named is installed (one line saying how, else)."""
    for item in cfg.runtime.track:
        kind = item.partition(":")[0]
        if importlib.util.find_spec(PACKAGES[kind]) is None:
            raise MedtlError(f"runtime.track={item} needs the {PACKAGES[kind]} package, which is not installed; "
                             f"pip install -e \".[track]\" (or drop --track {kind})")


@contextmanager
def tracked(cfg: RunConfig, folder: RunFolder, resume: bool, parents: Mapping[str, str] = {}) -> Iterator[Trackers]:
    """The run's trackers, opened (a resumed run continues the runs tracking.json names; `parents`: the run id
    each kind nests this run under, a study's) and closed with the run's outcome; their record written to the
    run folder's tracking.json."""
    before = _read(folder) if resume else {}
    trackers = [_open(item, cfg, folder, before.get(item.partition(":")[0], {}), parents)
                for item in cfg.runtime.track]
    if trackers:
        write_json(folder.tracking, {t.kind: t.record() for t in trackers})
    status = "FAILED"
    try:
        yield Trackers(trackers)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        for t in trackers:
            t.close(status)


def _read(folder: RunFolder) -> dict:
    return json.loads(folder.tracking.read_text()) if folder.tracking.is_file() else {}


def _open(item: str, cfg: RunConfig, folder: RunFolder, before: dict, parents: Mapping[str, str]) -> Tracker:
    kind, _, target = item.partition(":")
    return KINDS[kind](target, cfg, folder, before, parent=parents.get(kind))


def open_study(cfg: RunConfig, name: str, key: str) -> dict[str, dict]:
    """The tracker runs a study nests its points under, by kind (MLflow's: one run per study, found by `key` in
    the store or made), for a point's config `cfg`; TensorBoard nests by folder and needs none."""
    return {kind: study_run(target, Path(cfg.out), name, key)
            for kind, _, target in (item.partition(":") for item in cfg.runtime.track) if kind == "mlflow"}


def end_study(records: Mapping[str, dict], files: list[Path]) -> None:
    """A study's report files added to the runs `open_study` gave, which are then finished."""
    if "mlflow" in records:
        end_study_run(records["mlflow"], files)


def attach(folder: RunFolder, paths: list[Path], under: str) -> list[str]:
    """Add files written after a tracked run (its card) to the runs tracking.json names; returns the kinds
    they went to. A tracker's package missing here: said in the log, the files stay in the run folder."""
    done = []
    for kind, record in _read(folder).items():
        if importlib.util.find_spec(PACKAGES.get(kind, kind)) is None:
            log.warning("%s was tracked in %s, which is not installed here: %s not added there", folder, kind,
                        ", ".join(p.name for p in paths))
            continue
        tracker = _reopen(kind, folder, record)
        tracker.add_files(paths, under)
        tracker.close("FINISHED")
        done.append(kind)
    return done


def _reopen(kind: str, folder: RunFolder, record: dict) -> Tracker:
    where = record["uri"] if kind == "mlflow" else record["dir"]
    return KINDS[kind](where, RunConfig(), folder, record, reopen=True)  # only where it logs matters
