"""The run phase: the strategy's training (or auto's choice among candidates), which returns validation's
scores only. Test is scored after every choice, once, by the finalize phase (training/finalize.py)."""

from __future__ import annotations

import logging
from typing import Sequence

import torch

import medtl.training.distributed as distributed
from medtl.data.datasets import class_weights, train_transform
from medtl.models.memory import recomputed, recomputing
from medtl.models.strategies import Classifier, param_groups
from medtl.training.auto.search import choose
from medtl.training.cached import fit_plan, probe_head, train_head_on_features, train_top_on_activations
from medtl.training.fitstate import EpochHook, Hook, calling
from medtl.training.loop import fit, make_loss, micro_batch, predict
from medtl.training.prepared import Prepared, Trained  # noqa: F401  (Trained: imported from here before)
from medtl.training.results import SplitScores, TrainResult

log = logging.getLogger(__name__)


def run_strategy(p: Prepared, model: Classifier | None, progress: bool, on_epoch: EpochHook | None,
                 prepare_seconds: float, hooks: Sequence[Hook] = ()) -> Trained:
    """The strategy's training; with `model` None (strategy auto) auto's choice among candidates, each with its
    own Prepared and model (`on_epoch` is not called then). `hooks` (the run's trackers) are called at the
    events of every fit: each candidate's too."""
    if model is not None:
        own = [calling(on_epoch)] if on_epoch is not None else []
        return Trained(p, model, train(p, model, progress, [*hooks, *own]))
    outcome = choose(p, _with(hooks), progress, prepare_seconds)
    return Trained(outcome.p, outcome.model, outcome.result, outcome.record)


def _with(run_hooks: Sequence[Hook]):
    """`train` with the run's hooks before each fit's own."""
    def train_with(p: Prepared, model: Classifier, progress: bool, hooks: Sequence[Hook] = ()) -> TrainResult:
        return train(p, model, progress, [*run_hooks, *hooks])
    return train_with


def train(p: Prepared, model: Classifier, progress: bool, hooks: Sequence[Hook] = ()) -> TrainResult:
    """Train `model` per `p`'s strategy; returns the fit with validation's scores only (`scores["val"]`).
    `hooks` are called with the `FitState` after every epoch of the strategy's own fit (not LP-FT's probe)."""
    tc = p.cfg.train
    weights = class_weights(p.splits.labels["train"], len(p.splits.classes)) if tc.class_weights else None
    loss_fn = make_loss(p.binary, weights, tc.label_smoothing)
    if p.strategy.cached == "features":
        return train_head_on_features(p, model, loss_fn, progress, hooks)
    if _lp_ft(p):
        probe_head(p, model, loss_fn, progress)
    if p.strategy.cached == "activations" and p.cfg.cache.cache_frozen:
        try:
            return train_top_on_activations(p, model, loss_fn, progress, hooks)
        except ValueError as exc:
            log.info("partial: training end to end, the frozen prefix cannot be cached (%s)", exc)
    model.to(memory_format=torch.channels_last)  # as the inputs: measured faster on CPU, no re-layout in DDP
    if p.cfg.runtime.sync_bn:
        model = distributed.sync_batch_norm(model, p.device)
    transform = train_transform(p.size, p.cfg.data.hflip) if p.cfg.data.augment else None
    batches = p.loader("train", True, tc.batch_size, transform)
    val = p.loader("val", False, tc.batch_size)
    plan = fit_plan(p, loss_fn, param_groups(model, tc.lr, tc.backbone_lr_scale),
                    micro_batch(p.cfg.runtime, p.size, p.device))
    rc = p.cfg.runtime
    stages = () if rc.sync_bn else recomputed(p.cfg.model.backbone, rc.recompute, p.device)  # SyncBN: untried
    with recomputing(model.backbone, stages) as names:
        if names:
            log.info("recomputing %s in backward (runtime.recompute=%s)", ", ".join(names), rc.recompute)
        state = fit(model, batches, val, p.prepare, plan, hooks, progress)
    scores = SplitScores(*predict(model, val, p.prepare, p.device, "predict val", progress))
    return TrainResult(state.history, state.best_epoch, {"val": scores})


def _lp_ft(p: Prepared) -> bool:
    """LP-FT's probe step runs for the strategies that take it (partial, full) from pretrained weights, unless a
    resumed run's state (which holds the head) is there."""
    if p.cfg.train.head_init != "probe" or not p.strategy.probe_first:
        return False
    if p.weights == "none":
        log.info("LP-FT: no pretrained weights to probe; the head starts random")
        return False
    control = p.control
    return not (control.resume and control.state_path is not None and control.state_path.is_file())
