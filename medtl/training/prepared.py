"""The records the run's phases hand each other: what initialize prepared (`Prepared`: config, backbone, weights,
data splits, the decoded image store and the preprocessing that travels with the weights; loaders over it, and
the same data at another image size), the run's control of its fits (`RunControl`), and what training hands to
finalize (`Trained`) and the chosen model's final scores (`Scored`). The phases import these records, never
each other."""

from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from medtl.core.config import RunConfig
from medtl.core.strategies import StrategySpec
from medtl.data.audit import Facts
from medtl.data.datasets import StoreDataset
from medtl.data.images import ImageStore, build_store, check_failures
from medtl.data.preprocess import Preprocess
from medtl.data.splits import DataSplits
from medtl.models.backbones import BackboneSpec
from medtl.models.strategies import Classifier
from medtl.training.auto.record import AutoRecord
from medtl.training.results import SplitScores, TrainResult
from medtl.training import distributed


@dataclass(frozen=True)
class RunControl:
    """How the run around a fit controls it (not what it trains): its time limit and its saved state.

    Attributes:
        deadline: `time.monotonic()` by which training stops (train.budget); None: no limit.
        state_path: Where the training state is saved after every epoch (for `--resume`); None: not saved.
        resume: Continue from `state_path` (only when asked: `--resume`).
    """

    deadline: float | None = None
    state_path: Path | None = None
    resume: bool = False


@dataclass(frozen=True)
class Prepared:
    """Everything a run needs, validated, before anything is written; a changed copy (`dataclasses.replace`,
    `at_size`, `with_control`) for a candidate or another size, never changed in place."""

    cfg: RunConfig
    spec: BackboneSpec
    weights: str
    splits: DataSplits
    store: ImageStore
    preprocess: Preprocess
    device: torch.device
    cache_dir: Path
    audit_notes: list[str] = field(default_factory=list)
    facts: dict[str, Facts] = field(default_factory=dict)  # the audit's digest and perceptual hash, by ref
    control: RunControl = RunControl()  # the run's time limit and saved state

    def with_control(self, **changes) -> "Prepared":
        """This run with its control changed (`deadline`, `state_path`, `resume`)."""
        return dataclasses.replace(self, control=dataclasses.replace(self.control, **changes))

    @property
    def strategy(self) -> StrategySpec:
        """The record of the run's strategy (medtl/core/strategies/): what trains, what is cached."""
        return self.cfg.model.strategy_spec

    @property
    def binary(self) -> bool:
        return len(self.splits.classes) == 2

    @property
    def size(self) -> int:
        return self.preprocess.size

    @property
    def in_chans(self) -> int:
        return self.preprocess.in_chans

    def loader(self, split: str, train: bool, batch_size: int, transform=None, shard: bool = True) -> DataLoader:
        """Images of `split`; this process's share of each batch under torchrun unless `shard` is off."""
        rows = np.array([self.store.row(r) for r in self.splits.refs[split]], dtype=np.int64)
        ds = StoreDataset(self.store.array, rows, self.splits.labels[split], self.in_chans, transform)
        workers = self.workers
        return distributed.loader(ds, batch_size, train, self.cfg.train.seed,
                                  None if shard else distributed.SINGLE, pin_memory=self.device.type == "cuda",
                                  num_workers=workers, persistent_workers=workers > 0 and train)

    def batches(self, dataset, batch_size: int, train: bool) -> DataLoader:
        """This process's share of an in-memory data set (features, activations); one that makes whole batches
        itself (`collate`, as `cached.RowsDataset`) is collated by it."""
        return distributed.loader(dataset, batch_size, train, self.cfg.train.seed,
                                  collate_fn=getattr(dataset, "collate", None))

    @property
    def workers(self) -> int:
        """Augmentation runs in the loader: on CUDA it needs worker processes to keep the GPU busy."""
        if self.cfg.runtime.workers is not None:
            return self.cfg.runtime.workers
        return min(8, os.cpu_count() or 1) if self.device.type == "cuda" else 0

    def at_size(self, size: int, cfg: RunConfig, progress: bool = True) -> "Prepared":
        """This run's data at another image size, with `cfg`: the same splits, content keys, audit and weights
        (discovery, carving and the audit are not done again), only another decoded-image store, decoded from
        the bytes already read (`images._ReadOnce`) or found in the cache."""
        pre = dataclasses.replace(self.preprocess, size=size)
        with distributed.main_first():
            store = build_store(self.splits.all_refs(), size, self.cache_dir, progress, pre.decoding)
        splits = self.splits
        if store.failed:  # unreadable at this size alone: dropped from this size's splits only
            check_failures(store.failed, cfg.data.strict)
            splits = copy.deepcopy(splits)
            splits.drop(set(store.failed))
        return dataclasses.replace(self, cfg=cfg, splits=splits, store=store, preprocess=pre,
                                   control=dataclasses.replace(self.control, state_path=None, resume=False))

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return self.preprocess.normalize(self.to_device(x))

    def to_device(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.device, non_blocking=True)


@dataclass
class Trained:
    """What the run phase hands to finalize: the Prepared and model of the strategy trained (auto: of the
    candidate chosen), its fit, and auto's record (None for a fixed strategy)."""

    p: Prepared
    model: Classifier
    result: TrainResult
    auto: AutoRecord | None = None


@dataclass
class Scored:
    """The chosen model's final scores.

    Attributes:
        trained: The run phase's result; its `p` has eval.tta resolved (hflip or none).
        scores: `SplitScores` by split (val, and test when the data have one), calibrated.
        temperature: The temperature applied (1.0: none).
        uncalibrated: {split: calibration before the temperature}; {} without one.
        threshold: The decision threshold chosen on validation (0.5 for a multiclass task).
        tta: What test-time augmentation was applied, and why.
    """

    trained: Trained
    scores: dict[str, SplitScores]
    temperature: float
    uncalibrated: dict
    threshold: float
    tta: dict
