"""Everything a run needs, checked and decoded before anything is written: config, backbone, weights, data
splits, the decoded image store and the preprocessing that travels with the weights."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from medtl.core.config import RunConfig
from medtl.core.device import pick_device
from medtl.core.errors import MedtlError
from medtl.core.io import cache_root
from medtl.data.audit import audit, warnings_for
from medtl.data.datasets import StoreDataset
from medtl.data.images import Decoding, ImageStore, build_store, check_failures
from medtl.data.preprocess import Preprocess
from medtl.data.sources import discover
from medtl.data.splits import DataSplits
from medtl.models.backbones import BackboneSpec, get_spec
from medtl.models.strategies import effective_weights
from medtl.training import distributed
from medtl.training.loop import tune_allocator

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    """Everything a run needs, validated, before anything is written."""

    cfg: RunConfig
    spec: BackboneSpec
    weights: str
    splits: DataSplits
    store: ImageStore
    preprocess: Preprocess
    device: torch.device
    cache_dir: Path
    audit_notes: list[str] = field(default_factory=list)
    state_path: Path | None = None  # per-epoch training state, for --resume
    resume: bool = False  # continue from state_path (only when asked: --resume)
    deadline: float | None = None  # time.monotonic() by which training stops (train.budget)
    scored: tuple[str, ...] = ("val", "test")  # the splits whose probabilities training returns

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
        """This process's share of an in-memory data set (features, activations)."""
        return distributed.loader(dataset, batch_size, train, self.cfg.train.seed)

    @property
    def workers(self) -> int:
        """Augmentation runs in the loader: on CUDA it needs worker processes to keep the GPU busy."""
        if self.cfg.train.workers is not None:
            return self.cfg.train.workers
        return min(8, os.cpu_count() or 1) if self.device.type == "cuda" else 0

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return self.preprocess.normalize(self.to_device(x))

    def to_device(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.device, non_blocking=True)


def prepare(cfg: RunConfig, progress: bool = True, device: torch.device | None = None,
            whole_tree_as: str | None = None) -> Prepared:
    """Check the backbone, weights and data, decode images (cached; under torchrun by the first process of
    each node while the others wait); raises MedtlError on bad input."""
    spec = get_spec(cfg.model.backbone)
    weights = effective_weights(cfg.model)
    device = device or pick_device(cfg.train.device)
    if device.type == "cpu" and cfg.train.tune_malloc:
        log.info("glibc allocator tuned (no mmap, no trim): %s", tune_allocator())
    torch.set_num_threads(cfg.train.threads or distributed.default_threads())
    splits = discover(cfg.data, cfg.data.split_seed, whole_tree_as)
    for note in splits.notes:
        log.info("split: %s", note)
    decoding = Decoding.of(cfg.data)
    pre = Preprocess(cfg.data.image_size or spec.input_size, 1 if cfg.data.channels == "adapt" else 3,
                     spec.mean, spec.std, decoding)
    cache_dir = cache_root(cfg.data.cache_dir)
    with distributed.main_first():
        store = build_store(splits.all_refs(), pre.size, cache_dir, progress, decoding)
    check_failures({**splits.rejected, **store.failed}, cfg.data.strict)
    splits.drop(set(store.failed))
    _log_counts(splits)
    if "train" in splits.labels and len(np.unique(splits.labels["train"])) < 2:
        raise MedtlError(f"train split of {cfg.data.path} has one class after skipping unreadable images")
    notes = warnings_for(audit(splits, perceptual=False)) if cfg.data.audit else []
    for note in notes:
        log.warning("audit: %s", note)
    return Prepared(cfg, spec, weights, splits, store, pre, device, cache_dir, notes)


def _log_counts(splits: DataSplits) -> None:
    for split, y in splits.labels.items():
        counts = np.bincount(y, minlength=len(splits.classes))
        log.info("%s: %d images (%s)", split, len(y), ", ".join(f"{c} {n}" for c, n in zip(splits.classes, counts)))
