"""What `fit` runs (`FitPlan`), where it stands (`FitState`), and the hooks called after each epoch.

A hook is a callable that receives the `FitState` after an epoch (its history row recorded, its best weights
kept); it may set `state.stopped` to end training there, or raise (hyperparameter search prunes that way).
`fit` calls the caller's hooks first, then its own: early stopping, the state saved for `--resume`, the
deadline (train.budget).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from medtl.core.config import TrainConfig
from medtl.training import distributed

log = logging.getLogger(__name__)

EpochHook = Callable[[int, dict], None]  # (epoch, validation metrics); may raise to stop training
SAVED = ("epoch", "best", "best_state", "best_epoch", "history", "stopped", "planned")  # the resume file's "fit" keys


@dataclass(frozen=True)
class FitPlan:
    """What one fit runs: its settings (optimizer, schedule, epochs, patience, monitor), its loss, where, and
    the limits the run sets on it.

    Attributes:
        cfg: The training settings.
        loss_fn: `loss_fn(logits, labels)`.
        device: Where the model trains.
        classes: Class names (validation is scored with them).
        groups: Optimizer parameter groups; None: every trainable parameter at `cfg.lr`.
        micro: Images per forward/backward pass (`micro_batch`); None: the whole batch.
        deadline: `time.monotonic()` by which training stops (train.budget); None: no limit.
        state_path: Where the training state is saved after every epoch (for `--resume`); None: not saved.
        resume: Continue from `state_path` when it is there.
    """

    cfg: TrainConfig
    loss_fn: Callable
    device: torch.device
    classes: tuple[str, ...] | list[str] = ()
    groups: list[dict] | None = None
    micro: int | None = None
    deadline: float | None = None
    state_path: Path | None = None
    resume: bool = False


@dataclass
class FitState:
    """Where a fit stands after its last finished epoch; the resume file holds it (`to_dict`).

    Attributes:
        epoch: The last finished epoch (0 before the first).
        best: The monitor's key of the best epoch (`monitor_key`: larger is better).
        best_state: A deep copy of the model's state dict at the best epoch.
        best_epoch: The best epoch (1-based; 0 before the first).
        history: One row per finished epoch.
        stopped: No further epoch runs (early stopping, or a hook said so).
        planned: The epochs the fit runs: the plan's `cfg.epochs` when it starts or resumes (a resumed fit
            given another number continues to it, its cosine schedule stretched); a hook may change it (auto
            fits a candidate's epochs to its deadline: the cosine schedule then follows the new length).
        val: The last epoch's validation metrics (not saved).
        epoch_began: `time.perf_counter()` when the last epoch began (not saved).
    """

    epoch: int = 0
    best: tuple[float, float] = (-math.inf, -math.inf)
    best_state: dict | None = None
    best_epoch: int = 0
    history: list[dict] = field(default_factory=list)
    stopped: bool = False
    planned: int = 0
    val: dict = field(default_factory=dict, repr=False)
    epoch_began: float = 0.0

    def keep_if_best(self, key: tuple[float, float], epoch: int, model: torch.nn.Module) -> None:
        """Keep the model's weights when `key` beats the best so far (the first epoch always does). The copy is
        deep: a state_dict() reference would keep changing as training goes on."""
        if self.best_state is None or key > tuple(self.best):
            self.best, self.best_epoch = tuple(key), epoch
            self.best_state = copy.deepcopy(model.state_dict())

    def to_dict(self) -> dict[str, Any]:
        """Plain values for the resume file (loaded with weights_only=True)."""
        return {"epoch": self.epoch, "best": list(self.best), "best_state": self.best_state,
                "best_epoch": self.best_epoch, "history": self.history, "stopped": self.stopped,
                "planned": self.planned}

    @classmethod
    def from_dict(cls, saved: dict[str, Any]) -> "FitState":
        """The state a resume file holds; files written before this record held the same keys in a dict (without
        `planned`: the plan's epochs)."""
        return cls(**{k: saved[k] for k in SAVED if k in saved} | {"best": tuple(saved.get("best", cls.best))})


Hook = Callable[[FitState], None]


def calling(on_epoch: EpochHook) -> Hook:
    """An `on_epoch(epoch, val_metrics)` callback as a hook (hyperparameter search reports and prunes by it)."""
    def hook(state: FitState) -> None:
        on_epoch(state.epoch, state.val)
    return hook


def early_stop(cfg: TrainConfig) -> Hook:
    """Stop when validation's `cfg.monitor` has not improved for `cfg.patience` epochs."""
    def hook(state: FitState) -> None:
        if state.epoch - state.best_epoch >= cfg.patience:
            state.stopped = True
            log.info("early stop: val %s has not improved for %d epochs (best epoch %d)", cfg.monitor,
                     cfg.patience, state.best_epoch)
    return hook


def deadline(at: float | None, world: distributed.World) -> Hook:
    """Stop when another epoch as long as the last would end past `at` (a `time.monotonic()` value, from
    train.budget); rank 0 decides for every process. Not recorded in the saved state: a resumed run goes on."""
    def hook(state: FitState) -> None:
        if state.stopped:  # decided already (the same on every process): no collective
            return
        seconds = time.perf_counter() - state.epoch_began
        late = at is not None and time.monotonic() + seconds > at
        if bool(distributed.broadcast(late, world)):
            log.info("budget: stopping after epoch %d (another would end past the budget)", state.epoch)
            state.stopped = True
    return hook
