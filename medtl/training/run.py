"""One training run from config to run folder, in three phases: initialize (prepare, claim the run folder,
write the inputs: training/initialize.py), run (the strategy's training, or auto's choice, which returns
validation's scores: training/train.py), finalize (test scored once, after every choice; metrics,
predictions, checkpoint, figures: training/finalize.py). Also re-scoring a saved run on any data.

Everything that can fail on bad input (config, data, backbone, weights) is checked before the run folder
is created, so a failed start leaves nothing half-written behind.
"""

from __future__ import annotations

import logging
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Mapping

import torch

import medtl.core.logs as logs
import medtl.training.distributed as distributed
from medtl.core.config import RunConfig
from medtl.core.device import pick_device
from medtl.training import tracking
from medtl.training.finalize import finalize
from medtl.training.initialize import check_early, claim, start, write_inputs
from medtl.training.fitstate import EpochHook
from medtl.training.guarded import guarded
from medtl.training.runtime import deterministic, seed_everything
from medtl.training.train import run_strategy

log = logging.getLogger(__name__)


def run(cfg: RunConfig, progress: bool = True, on_epoch: EpochHook | None = None, resume: bool = False,
        parents: Mapping[str, str] = {}) -> Path:
    """Train and evaluate per `cfg`; returns the run folder. `on_epoch(epoch, val_metrics)` is called after
    each epoch (hyperparameter search reports and prunes through it); `parents`: the tracker run each kind
    nests this run under (a study's, `tracking.open_study`). Under torchrun every process calls this; they
    train together and rank 0 writes the run folder."""
    with distributed.session(pick_device(cfg.runtime.device)) as device, deterministic(cfg.runtime.deterministic):
        world = distributed.current()
        return _run(cfg, progress and world.main, on_epoch, resume, device, world, parents)


def _run(cfg: RunConfig, progress: bool, on_epoch: EpochHook | None, resume: bool, device: torch.device,
         world: distributed.World, parents: Mapping[str, str]) -> Path:
    seed_everything(cfg.train.seed)
    check_early(cfg)
    started = start(cfg, progress, resume, device, world)  # initialize: nothing written before it passes
    p = started.p
    with ExitStack() as held:
        folder = claim(cfg, resume, held, world)
        p = p.with_control(state_path=folder.state)
        if not world.main:  # trains its share, and scores its share of test and of the test-time augmentation
            trained = run_strategy(p, started.model, progress, on_epoch, started.prepare_seconds)
            finalize(trained, None, progress, 0.0)
            return folder.path
        with logs.to_file(folder.log), guarded(folder, cfg):
            write_inputs(p, folder, resume)
            log.info("run folder %s; backbone %s (weights %s), strategy %s, %d px, device %s%s", folder,
                     p.spec.name, p.weights, cfg.model.strategy, p.size, p.device,
                     f", {world.size} processes (DDP)" if world.active else "")
            with tracking.tracked(cfg, folder, resume, parents) as trackers:
                began = time.perf_counter()
                trained = run_strategy(p, started.model, progress, on_epoch, started.prepare_seconds,
                                       [trackers] if trackers else [])
                metrics = finalize(trained, folder, progress, began)
                folder.remove_run_state()  # the run is complete: the checkpoint holds its result
                trackers.after_run(folder, metrics)
    return folder.path
