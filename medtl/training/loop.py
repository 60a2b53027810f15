"""The training loop: loss, optimizer, schedule, early stopping on validation, best weights kept.

`fit` trains any module on any batches; the cached-feature path (a head on features) and the
end-to-end path (a whole classifier on images) share it.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import medtl.training.distributed as distributed
from medtl.core.config import RuntimeConfig, TrainConfig
from medtl.core.errors import MedtlError
from medtl.core.logs import length, progress as progress_of
from medtl.data.datasets import in_background
from medtl.evaluation.metrics import score
from medtl.models.strategies import to_probs
from medtl.training.fitstate import (  # noqa: F401  (FitPlan, EpochHook: imported from here by callers)
    BatchEnd, EpochHook, Events, FitHook, FitPlan, FitState, Hook, early_stop)
from medtl.training.results import monitor_key
from medtl.training.resume import load_state, rng_state, save_state, set_rng_state
from medtl.training.runtime import seed_everything
from medtl.training.step import Prepare, autocast, chunk_count, train_step  # noqa: F401  (imported from here)

log = logging.getLogger(__name__)

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD,
              "rmsprop": torch.optim.RMSprop}

# images per forward/backward pass at 224 px on a CPU (bench/memory.py: Lite0 full fine-tuning at batch 32 peaks
# at ~4.4 GiB RSS in one pass, ~2.5 GiB in two of 16, for ~8 % fewer images/s)
MICRO_AT_224 = 16


def make_loss(binary: bool, weights: torch.Tensor | None, smoothing: float = 0.0) -> Callable:
    """Class-weighted BCE on one logit (binary) or weighted softmax cross-entropy; with label `smoothing` e the
    targets move e/2 (binary) or e spread over the classes (softmax) towards uniform."""
    def loss_fn(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        w = weights.to(logits.device) if weights is not None else None
        if binary:
            sample_w = w[y] if w is not None else None
            target = y.float() * (1 - smoothing) + smoothing / 2
            return F.binary_cross_entropy_with_logits(logits.squeeze(1), target, weight=sample_w)
        return F.cross_entropy(logits, y, weight=w, label_smoothing=smoothing)
    return loss_fn


def make_optimizer(groups: list[dict], cfg: TrainConfig) -> torch.optim.Optimizer:
    kwargs = {"lr": cfg.lr, "weight_decay": cfg.weight_decay}
    if cfg.optimizer in ("sgd", "rmsprop"):
        kwargs["momentum"] = cfg.momentum
    return OPTIMIZERS[cfg.optimizer](groups, **kwargs)


def make_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig):
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(cfg.epochs, 1))
    if cfg.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.step_size, gamma=cfg.gamma)
    return None  # "none"


@torch.inference_mode()
def predict(model: nn.Module, batches: Iterable, prepare: Prepare, device: torch.device,
            desc: str = "predict", progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and labels over `batches` with the model in eval mode; over a sharded loader, those of
    all processes (in dataset order)."""
    model.eval()
    probs, labels = [], []
    for x, y in progress_of(batches, desc, progress, unit="batch"):
        with autocast(device):
            probs.append(to_probs(model(prepare(x))).cpu())
        labels.append(torch.as_tensor(y))
    return distributed.gather(batches, torch.cat(probs).numpy(), torch.cat(labels).numpy())


@torch.inference_mode()
def extract(backbone: nn.Module | Callable[[torch.Tensor], torch.Tensor], batches: Iterable, prepare: Prepare,
            device: torch.device, desc: str, progress: bool) -> np.ndarray:
    """Features (N, D) float32 over `batches`: of a backbone in eval mode, or of an engine's runner."""
    if isinstance(backbone, nn.Module):
        backbone.eval()
    out = []
    for x, _ in progress_of(in_background(batches), desc, progress, total=length(batches), unit="batch"):
        with autocast(device):
            out.append(backbone(prepare(x)).float().cpu())
    return torch.cat(out).numpy()


class Deadline(FitHook):
    """train.budget's time limit, `at` (a `time.monotonic()` value; None: no limit). Past it, the epoch in
    progress ends after its batch: an epoch far slower than planned (a busy machine) cannot overrun the budget
    by more than a batch and the validation pass. After an epoch, training stops when another as long would
    end past it. Rank 0 decides for every process, so all stop at one batch (no collective without a
    deadline). Not recorded in the saved state: a resumed run goes on."""

    def __init__(self, at: float | None, world: distributed.World):
        self.at, self.world = at, world

    def after_batch(self, state: FitState, batch: BatchEnd) -> None:
        if self.at is None:
            return
        if bool(distributed.broadcast(time.monotonic() > self.at, self.world)):
            log.info("budget: the deadline has passed; the epoch ends after batch %d", batch.index + 1)
            state.end_epoch = True

    def after_epoch(self, state: FitState) -> None:
        if state.stopped:  # decided already (the same on every process): no collective
            return
        seconds = time.perf_counter() - state.epoch_began
        late = self.at is not None and time.monotonic() + seconds > self.at
        if bool(distributed.broadcast(late, self.world)):
            log.info("budget: stopping after epoch %d (another would end past the budget)", state.epoch)
            state.stopped = True


def fit(model: nn.Module, train_batches: Iterable, val_batches: Iterable, prepare: Prepare, plan: FitPlan,
        hooks: Sequence[Hook] = (), progress: bool = True) -> FitState:
    """Train per `plan`, scoring validation after every epoch; returns the final `FitState`, the model holding
    its best epoch's weights. `hooks` (see fitstate.py) are called at every event, then fit's own: after each
    epoch early stopping, the state saved for `--resume` (with `plan.state_path`, by rank 0) and the deadline,
    after each batch the deadline; any of them can stop training. With `plan.resume` and the state file there,
    training continues exactly where it stopped. Under torchrun the model trains wrapped in DDP on sharded
    batches; every process sees the same validation metrics, so all stop together."""
    cfg, world = plan.cfg, distributed.current()
    opt = make_optimizer(plan.groups or [{"params": [p for p in model.parameters() if p.requires_grad]}], cfg)
    sched = make_scheduler(opt, cfg)
    state = FitState()
    if plan.resume and plan.state_path is not None and plan.state_path.is_file():
        state = _resume(plan.state_path, model, opt, sched, world)
    theirs = Events(hooks)
    own = Events([early_stop(cfg), *([_saving(plan.state_path, model, opt, sched, world)] if plan.state_path else []),
                  Deadline(plan.deadline, world)])
    net = distributed.wrap(model, plan.device, world)
    if sched is not None and state.planned and state.planned != cfg.epochs:
        stretch(sched, cfg.epochs)  # resumed for more (or fewer) epochs than it was saved with: auto continues one
    state.planned = cfg.epochs
    (theirs + own).before_fit(plan, state)
    for epoch in progress_of(_epochs(state), "epochs", progress, total=state.planned, unit="epoch"):
        state.epoch_began = time.perf_counter()
        distributed.set_epoch(train_batches, epoch)
        train_loss = _train_epoch(net, train_batches, prepare, opt, plan, theirs + own, state, progress)
        if not math.isfinite(train_loss):
            raise MedtlError(f"training diverged in epoch {epoch} (training loss {train_loss}); lower the learning "
                             f"rate (train.lr={cfg.lr:g}) and start again; epochs 1..{epoch - 1} are kept in the "
                             "run folder's state.pt")
        distributed.sync_buffers(model, world)
        probs, y = predict(model, val_batches, prepare, plan.device)
        state.val = score(y, probs, plan.classes)
        _record(state, epoch, train_loss, opt.param_groups[0]["lr"])
        if sched is not None:
            sched.step()
        state.keep_if_best(monitor_key(state.val, cfg.monitor), epoch, model)
        state.epoch = epoch
        _after_epoch(state, theirs, sched, world)
        own.after_epoch(state)
    model.load_state_dict(state.best_state)
    (theirs + own).after_fit(state)
    return state


def _after_epoch(state: FitState, hooks: Events, sched, world: distributed.World) -> None:
    """The caller's hooks; when one changed the planned epochs (rank 0's decision holds on every process), the
    schedule follows before the state is saved."""
    planned = state.planned
    hooks.after_epoch(state)
    state.planned = int(distributed.broadcast(state.planned, world))
    if state.planned != planned and sched is not None:
        stretch(sched, state.planned)


def _epochs(state: FitState) -> Iterator[int]:
    """The next epoch while the fit goes on: a hook may stop it or change `state.planned` between epochs."""
    while not state.stopped and state.epoch < state.planned:
        yield state.epoch + 1


def stretch(sched, epochs: int) -> None:
    """A cosine schedule set to anneal over `epochs` from now on: its period changes and every group's
    learning rate moves to the new curve at the epoch reached (the scheduler's recursive steps then follow that
    curve; its state, saved for `--resume`, holds the period). Other schedules do not depend on the length."""
    if not isinstance(sched, torch.optim.lr_scheduler.CosineAnnealingLR) or sched.T_max == max(epochs, 1):
        return
    sched.T_max = max(epochs, 1)
    at = min(sched.last_epoch, sched.T_max)
    for group, base in zip(sched.optimizer.param_groups, sched.base_lrs):
        group["lr"] = sched.eta_min + (base - sched.eta_min) * (1 + math.cos(math.pi * at / sched.T_max)) / 2
    sched._last_lr = [group["lr"] for group in sched.optimizer.param_groups]


def _record(state: FitState, epoch: int, train_loss: float, lr: float) -> None:
    val, seconds = state.val, time.perf_counter() - state.epoch_began
    state.history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val["loss"],
                          "val_accuracy": val["accuracy"], "val_auc": val["auc"],
                          "val_sensitivity": val["sensitivity"], "val_specificity": val["specificity"],
                          "val_f1": val["f1"], "lr": lr, "seconds": seconds})
    log.info("epoch %d/%d train_loss %.4f val_loss %.4f val_acc %.4f val_auc %.4f (%.1fs)", epoch, state.planned,
             train_loss, val["loss"], val["accuracy"], val["auc"], seconds)


def _saving(path: Path, model: nn.Module, opt, sched, world: distributed.World) -> Hook:
    """A hook that saves the whole training state after an epoch: written by rank 0, with every process's RNG
    state (each process's own draws: augmentation, dropout)."""
    def hook(state: FitState) -> None:
        rngs = distributed.collect(rng_state(), world)
        if world.main:
            save_state(path, {"fit": state.to_dict(), "model": model.state_dict(), "optimizer": opt.state_dict(),
                              "scheduler": sched.state_dict() if sched else None, "rng": rngs[0],
                              "rng_ranks": rngs})
    return hook


def _resume(path: Path, model: nn.Module, opt, sched, world: distributed.World) -> FitState:
    """Every process loads the state; each takes back its own RNG state when the number of processes is the
    one that saved it (then the run ends as an uninterrupted one would), else rank 0's, with a warning."""
    saved = load_state(path)
    model.load_state_dict(saved["model"])
    opt.load_state_dict(saved["optimizer"])
    if sched is not None:
        sched.load_state_dict(saved["scheduler"])
    rngs = saved.get("rng_ranks") or [saved["rng"]]
    if len(rngs) == world.size:
        set_rng_state(rngs[world.rank])
    else:
        log.warning("%s was saved by %d process(es), resumed on %d: training continues, but augmentation draws "
                    "differ from an uninterrupted run", path, len(rngs), world.size)
        set_rng_state(rngs[0])
        if world.rank:
            seed_everything(int(torch.randint(2**31 - 1, (1,)).item()) + world.rank)
    log.info("resuming from %s after epoch %d", path, saved["fit"]["epoch"])
    return FitState.from_dict(saved["fit"])


def micro_batch(cfg: RuntimeConfig, size: int, device: torch.device) -> int | None:
    """Images per forward/backward pass when training on images: runtime.micro_batch; else, on a CPU, 16 at 224 px,
    more for smaller images (activation memory grows with the image area); else the whole batch (None)."""
    if cfg.micro_batch:
        return cfg.micro_batch
    return max(1, int(MICRO_AT_224 * (224 / size) ** 2)) if device.type == "cpu" else None


def _train_epoch(model: nn.Module, batches: Iterable, prepare: Prepare, opt: torch.optim.Optimizer, plan: FitPlan,
                 events: Events, state: FitState, progress: bool = False) -> float:
    """One pass, one `train_step` per batch, `events.after_batch` after each (a hook may end the pass there,
    before the next batch is used: the deadline does); returns the mean training loss (over all processes' rows)."""
    model.train()
    world = distributed.current()
    total, count = 0.0, 0
    state.end_epoch = False
    for index, (x, y) in enumerate(progress_of(batches, "train", progress, unit="batch")):
        if state.end_epoch:  # a hook said so after the last batch (before this one was used)
            break
        loss, rows = train_step(model, x, y, prepare, opt, plan)
        total, count = total + loss, count + rows
        events.after_batch(state, BatchEnd(state.epoch + 1, index, rows, loss / max(rows, 1)))
    total, count = distributed.all_sum([total, count], plan.device, world)
    return total / max(count, 1)
