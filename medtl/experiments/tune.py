"""Hyperparameter search for one run with Optuna: TPE sampling, median pruning on validation AUC.

Storage is SQLite in the output folder by default; pass an RDB URL (e.g. postgresql://user@host/db) and
start several `medtl tune` processes, on one machine or many, to search one study together. Trials are
scored on validation AUC only: the test split is never looked at to choose.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, TypeVar

import optuna
import sqlalchemy
from optuna.exceptions import ExperimentalWarning
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

from medtl.core.io import make_dir
from medtl.core.config import RunConfig, apply_overrides
from medtl.core.errors import MedtlError
from medtl.core.runfolder import RunFolder
from medtl.evaluation.records import RunMetrics

log = logging.getLogger(__name__)

BATCH_SIZES = (16, 32, 64)
T = TypeVar("T")
SCHEMA_LOCK = 0x6D65_64746C  # PostgreSQL advisory-lock key ("medtl") held while Optuna creates its tables


def suggest(trial: optuna.Trial, base: RunConfig) -> dict[str, object]:
    """The search space: learning rate, head (linear / MLP with dropout), weight decay, batch size, and the
    number of unfrozen stages when the strategy reads it (`partial`)."""
    params: dict[str, object] = {
        "train.lr": trial.suggest_float("lr", 1e-5, 1e-2, log=True),
        "train.weight_decay": trial.suggest_float("weight_decay", 1e-6, 1e-1, log=True),
        "train.batch_size": trial.suggest_categorical("batch_size", BATCH_SIZES),
        "model.head": trial.suggest_categorical("head", ["linear", "mlp"]),
    }
    if params["model.head"] == "mlp":
        params["model.dropout"] = trial.suggest_float("dropout", 0.0, 0.5)
    if base.model.strategy_spec.uses_stages:
        params["model.unfreeze_stages"] = trial.suggest_int("unfreeze_stages", 1, 3)
    return params


def objective(base: RunConfig, out: Path):
    from medtl.training.run import run

    def score(trial: optuna.Trial) -> float:
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")  # who ran it, in a shared study
        params = suggest(trial, base)
        name = f"trial-{trial.number:04d}"
        cfg = apply_overrides(base, {**{k: str(v) for k, v in params.items()}, "out": str(out / "trials"),
                                     "name": name})

        def report(epoch: int, val: dict) -> None:
            trial.report(val["auc"], epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"validation AUC {val['auc']:.4f} at epoch {epoch} below the median")
        try:
            run_dir = run(cfg, progress=False, on_epoch=report)
        except optuna.TrialPruned:
            shutil.rmtree(out / "trials" / name, ignore_errors=True)
            raise
        metrics = RunMetrics.of_run(RunFolder(run_dir))
        trial.set_user_attr("run_dir", str(run_dir))
        return float(metrics.splits["val"]["auc"])
    return score


def tune(base: RunConfig, trials: int, out: Path, storage: str | None = None, study_name: str = "medtl",
         seed: int = 0) -> optuna.Study:
    """Run `trials` trials (this process's share when workers share the storage); returns the study."""
    if trials < 1:
        raise MedtlError(f"--trials {trials}: give at least 1")
    if base.model.strategy_spec.chooses:
        raise MedtlError("medtl tune searches the settings of one strategy, and the strategy is auto (the default); "
                         "pass --strategy linear, partial or full (auto chooses among them itself)")
    make_dir(out)
    shared = storage is not None  # workers sharing a database must not all draw the same seeded samples
    with _storage(storage or f"sqlite:///{(out / 'tune.db').resolve()}") as rdb:
        study = optuna.create_study(study_name=study_name, storage=rdb, direction="maximize", load_if_exists=True,
                                    sampler=optuna.samplers.TPESampler(seed=None if shared else seed),
                                    pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=2))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study.optimize(objective(base, out), n_trials=trials, catch=())
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if done:
        best = study.best_trial
        log.info("best trial %d: validation AUC %.4f, %s (%s)", best.number, best.value, best.params,
                 best.user_attrs.get("run_dir"))
    return study


@contextmanager
def _storage(url: str, grace_s: int = 180):
    """Optuna's RDB storage with heartbeats: a trial whose worker died (machine lost, process killed) is marked
    failed by the next worker after 3 minutes of silence and run again once. Workers started together on an
    empty PostgreSQL database would race to create Optuna's tables (duplicate key in pg_type), so there one
    worker creates them, and the study, under an advisory lock while the others wait."""
    def make() -> RDBStorage:
        with warnings.catch_warnings():  # heartbeats are marked experimental; we opt in knowingly, here only
            warnings.simplefilter("ignore", ExperimentalWarning)
            return RDBStorage(url, heartbeat_interval=min(60, grace_s), grace_period=grace_s,
                              heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1))
    if not url.startswith("postgresql"):
        yield _reach(url, make)
        return
    engine = _reach(url, lambda: sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool))
    try:
        with _reach(url, engine.connect) as conn:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": SCHEMA_LOCK})
            try:
                yield make()
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": SCHEMA_LOCK})
    finally:
        engine.dispose()


def _reach(url: str, open_: Callable[[], T]) -> T:
    """`open_()`, with a database that cannot be reached (or a URL without its driver) as one line naming the
    URL (password hidden) and the fix."""
    shown = re.sub(r"://([^:/@]*):[^@/]*@", r"://\1:***@", url)
    try:
        return open_()
    except ImportError as exc:
        raise MedtlError(f"--storage {shown}: no database driver for this URL ({exc.__cause__ or exc}); "
                         "postgresql:// works as installed, other databases need their SQLAlchemy driver "
                         "installed (e.g. pip install pymysql for mysql+pymysql://)") from exc
    except sqlalchemy.exc.SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise MedtlError(f"--storage {shown}: {reason}; check that the database server runs and the URL's user, "
                         "password, host, port and database, or leave out --storage (SQLite in --output-dir)") from exc
