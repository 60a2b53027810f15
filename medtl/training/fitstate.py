"""What `fit` runs (`FitPlan`), where it stands (`FitState`), and the hooks its events call.

`fit` has four events: before the fit (`before_fit(plan, state)`), after every optimizer step
(`after_batch(state, batch)`), after every epoch (`after_epoch(state)`: its history row recorded, its best
weights kept) and after the fit (`after_fit(state)`: the best weights loaded). A hook is a `FitHook` (override
the events it needs) or a plain callable, which is called after every epoch. After a batch a hook may set
`state.end_epoch` to end the pass there; after an epoch, `state.stopped` to end training, or raise
(hyperparameter search prunes that way). `fit` calls the caller's hooks first, then its own: early stopping,
the state saved for `--resume`, the deadline (train.budget). Hooks keep their own state: the `FitState` stays
the one record that `--resume` saves.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from medtl.core.config import TrainConfig

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
        label: What the fit trains, for hooks that report it (auto's candidates: "full 128 px").
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
    label: str = ""


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
        end_epoch: A hook ended the epoch in progress after its last batch (not saved).
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
    end_epoch: bool = False

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


@dataclass(frozen=True)
class BatchEnd:
    """What `after_batch` receives besides the state: the epoch, the batch's index in it (0-based), its rows
    (this process's) and their mean training loss."""

    epoch: int
    index: int
    rows: int
    loss: float


class FitHook:
    """A hook over `fit`'s events; each does nothing unless overridden."""

    def before_fit(self, plan: FitPlan, state: FitState) -> None:
        """Before the first epoch (of a resumed fit: before the next one)."""

    def after_batch(self, state: FitState, batch: BatchEnd) -> None:
        """After every optimizer step."""

    def after_epoch(self, state: FitState) -> None:
        """After every epoch, its history row recorded."""

    def after_fit(self, state: FitState) -> None:
        """After the last epoch, the model holding the best epoch's weights."""


Hook = FitHook | Callable[[FitState], None]


class _EveryEpoch(FitHook):
    """A plain callable called after every epoch."""

    def __init__(self, call: Callable[[FitState], None]):
        self.call = call

    def after_epoch(self, state: FitState) -> None:
        self.call(state)


class Events(FitHook):
    """The hooks of one fit, in order, each event called on all of them (itself a hook: groups nest)."""

    def __init__(self, hooks: Sequence[Hook] = ()):
        self.hooks = [h if isinstance(h, FitHook) else _EveryEpoch(h) for h in hooks]

    def __add__(self, other: "Events") -> "Events":
        return Events([*self.hooks, *other.hooks])

    def before_fit(self, plan: FitPlan, state: FitState) -> None:
        for hook in self.hooks:
            hook.before_fit(plan, state)

    def after_batch(self, state: FitState, batch: BatchEnd) -> None:
        for hook in self.hooks:
            hook.after_batch(state, batch)

    def after_epoch(self, state: FitState) -> None:
        for hook in self.hooks:
            hook.after_epoch(state)

    def after_fit(self, state: FitState) -> None:
        for hook in self.hooks:
            hook.after_fit(state)


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
