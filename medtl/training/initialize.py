"""The initialize phase: everything checked and decoded (`prepare`) before anything is written, then the run
folder claimed (made, or found for --resume, and locked) and the run's inputs written into it."""

from __future__ import annotations

import fcntl
import os
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Iterator

import torch

import medtl.training.distributed as distributed
from medtl.core.config import RunConfig, dump_yaml, run_budget
from medtl.core.errors import MedtlError
from medtl.core.io import atomic_write, cannot_write, make_dir, write_csv
from medtl.core.runfolder import RunFolder
from medtl.models.strategies import Classifier, build_classifier, effective_weights
from medtl.training import tracking
from medtl.training.runtime import seed_everything
from medtl.training.prepare import prepare
from medtl.training.prepared import Prepared


@dataclass
class Started:
    """A prepared run: its Prepared (deadline set), its model (None for strategy auto: each candidate builds
    its own), and the seconds `prepare` took (auto's plan counts them)."""

    p: Prepared
    model: Classifier | None
    prepare_seconds: float


def check_early(cfg: RunConfig) -> None:
    """Before the data are read: what the config asks that cannot run here. Strategy auto chooses among ways
    to transfer pretrained weights (it can be resumed: training/auto/state.py); every tracker named must be
    installed."""
    if cfg.model.strategy_spec.chooses and effective_weights(cfg.model) == "none":
        raise MedtlError("strategy auto chooses among ways to transfer pretrained weights, but model.weights is "
                         "none; pass --weights default (or a file), or --strategy scratch")
    tracking.require(cfg)


def start(cfg: RunConfig, progress: bool, resume: bool, device: torch.device, world: distributed.World) -> Started:
    """Prepare the run (nothing written yet) and build its model, the same on every process; the caller seeded
    the RNGs with train.seed."""
    started = time.monotonic()
    p = prepare(cfg, progress, device)
    budget = run_budget(cfg)
    prepare_seconds = time.monotonic() - started
    num_out = 1 if p.binary else len(p.splits.classes)
    auto = cfg.model.strategy_spec.chooses  # then each candidate builds its own model
    # the same on every process; the weights as prepare resolved them
    model = None if auto else build_classifier(cfg.model, num_out, p.in_chans, p.weights).to(p.device)
    if world.rank:  # other augmentations (and dropout) than rank 0's; rank 0 draws as one process would
        seed_everything(cfg.train.seed + world.rank)
    p = p.with_control(deadline=None if budget is None else started + budget, resume=resume)
    return Started(p, model, prepare_seconds)


def claim(cfg: RunConfig, resume: bool, held: ExitStack, world: distributed.World) -> RunFolder:
    """The run folder, made (or found, for --resume) and locked by rank 0 until `held` closes; every process
    gets its path, or stops with rank 0's reason (none waits for it)."""
    folder, error = None, None
    if world.main:
        try:
            folder = _claim(cfg, resume, held)
        except MedtlError as exc:
            error = exc
    path, message = distributed.broadcast((folder and str(folder.path), error and str(error)))
    if error is not None:
        raise error
    if message:
        raise MedtlError(message)
    return RunFolder(path)


def _claim(cfg: RunConfig, resume: bool, held: ExitStack) -> RunFolder:
    """The run folder, made (or found, for --resume) and locked for this process until `held` closes."""
    folder = _resume_dir(cfg) if resume else _make_run_dir(cfg)
    held.enter_context(_locked(folder))
    left = next((f for f in (folder.state, folder.auto_progress) if f.exists()), None)  # auto: auto-progress
    if not resume and left is not None:
        raise MedtlError(f"run folder {folder} holds an unfinished run ({left.name}); continue it with "
                         f"`medtl train --resume {folder}`, or pass another --name")
    return folder


@contextmanager
def _locked(folder: RunFolder) -> Iterator[None]:
    """One process per run folder: a second run with the same --name fails at once instead of mixing its
    epochs into the first one's state."""
    with cannot_write(folder.lock):
        fh = open(folder.lock, "a+")
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            raise MedtlError(f"run folder {folder} is in use by {holder}; wait for it to finish, or pass another "
                             "--name") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"medtl pid {os.getpid()}")
        fh.flush()
        try:
            yield
        finally:
            folder.lock.unlink(missing_ok=True)  # before the lock is released: a waiting run sees a fresh file


def write_inputs(p: Prepared, folder: RunFolder, resume: bool) -> None:
    """The resolved config, the audit's warnings and the skipped images, before training starts."""
    if not resume:
        atomic_write(folder.config, dump_yaml(p.cfg))
    if p.audit_notes:
        atomic_write(folder.audit, "".join(f"warning: {n}\n" for n in p.audit_notes))
    skipped = {**p.splits.rejected, **p.store.failed}
    if skipped:  # CSV, quoted: a file name may hold a tab or a newline
        write_csv(folder.skipped, ["path", "reason"], skipped.items())


def _resume_dir(cfg: RunConfig) -> RunFolder:
    folder = RunFolder(Path(cfg.out) / cfg.name)
    if folder.finished:
        raise MedtlError(f"run {folder} has already finished ({folder.metrics.name} exists); nothing to resume")
    return folder


def _make_run_dir(cfg: RunConfig) -> RunFolder:
    name = cfg.name or f"{cfg.model.backbone}-{cfg.model.strategy}-{datetime.now():%Y%m%d-%H%M%S}"
    folder = RunFolder(Path(cfg.out) / name)
    if folder.checkpoint.exists():
        raise MedtlError(f"run folder {folder} already holds a finished run; pass another --name or --output-dir")
    make_dir(folder.path)
    return folder
