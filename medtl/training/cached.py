"""The cached fast paths: a frozen network runs once per image and augmented view (kept on disk), and only
what trains runs every epoch.

linear   backbone features are cached; the head trains on them.
partial  the frozen prefix's activations are cached; the top stages and the head train on them, one
         augmented view per epoch in turn.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from medtl.data.datasets import train_transform
from medtl.models.backbones import weights_id
from medtl.models.engine import OnPixels, frozen_runner
from medtl.models.strategies import Classifier, Prefix, param_groups, split_frozen_prefix
import medtl.training.distributed as distributed
from medtl.training.features import cached, feature_key
from medtl.training.fitstate import FitPlan, Hook
from medtl.training.loop import extract, fit, predict
from medtl.training.prepared import Prepared
from medtl.training.results import SplitScores, TrainResult

log = logging.getLogger(__name__)

MIRROR = "mirror"  # the feature view of each image's horizontal mirror
CPU_EXTRACT_BATCH = 16  # measured: 1.7x the img/s of batch 64 for Lite0 at 224 px on a 2-core AVX2 CPU


def train_head_on_features(p: Prepared, model: Classifier, loss_fn, progress: bool,
                           hooks: Sequence[Hook] = ()) -> TrainResult:
    """linear: backbone features computed once (cached on disk), then the head trains on them; returns the
    fit with validation's scores."""
    tc = p.cfg.train
    frozen = FrozenPass(p, model.backbone)
    with distributed.main_first():
        feats = {s: _features(p, frozen, s, view=0, progress=progress) for s in p.splits.refs}
        train_x = [feats["train"]] + _augmented_views(p, frozen, progress)
    y = p.splits.labels
    train_ds = RowsDataset(np.concatenate(train_x), np.tile(y["train"], len(train_x)), (-1,))
    val = p.batches(RowsDataset(feats["val"], y["val"], (-1,)), 1024, train=False)
    train = p.batches(train_ds, tc.batch_size, train=True)
    def to_dev(x):
        return x.to(p.device)
    state = fit(model.head, train, val, to_dev, fit_plan(p, loss_fn), hooks, progress)
    scores = SplitScores(*predict(model.head, val, to_dev, p.device))
    return TrainResult(state.history, state.best_epoch, {"val": scores})


def fit_plan(p: Prepared, loss_fn, groups: list[dict] | None = None, micro: int | None = None) -> FitPlan:
    """The run's fit (every strategy's, built here only): its settings, budget, resume file and label."""
    control = p.control
    return FitPlan(p.cfg.train, loss_fn, p.device, p.splits.classes, groups, micro=micro, deadline=control.deadline,
                   state_path=control.state_path, resume=control.resume, label=f"{p.cfg.model.strategy} {p.size} px")


def probe_head(p: Prepared, model: Classifier, loss_fn, progress: bool) -> None:
    """LP-FT's first step (Kumar et al., ICLR 2022), in place: `model.head` trained as a linear probe on the
    frozen backbone's cached features (the linear strategy's own cache), so fine-tuning starts from a head
    that fits the pretrained features instead of a random one whose gradients distort them first."""
    tc = dataclasses.replace(p.cfg.train, epochs=p.cfg.train.probe_epochs, lr=p.cfg.train.probe_lr)
    views = dataclasses.replace(p.cfg.cache, feature_views=0)  # the clean images' features: no augmented pass
    probe = dataclasses.replace(p, cfg=dataclasses.replace(p.cfg, train=tc, cache=views)).with_control(
        state_path=None, resume=False)
    result = train_head_on_features(probe, model, loss_fn, progress)
    log.info("LP-FT: head trained as a linear probe for %d epochs (best epoch %d, val AUC %.4f, val loss %.4f); "
             "fine-tuning starts from it", len(result.history), result.best_epoch, result.best["val_auc"],
             result.best["val_loss"])


def train_top_on_activations(p: Prepared, model: Classifier, loss_fn, progress: bool,
                             hooks: Sequence[Hook] = ()) -> TrainResult:
    """partial: the frozen prefix runs once per image and view (cached on disk); the top stages and the
    head train on its activations, one augmented view per epoch in turn; returns the fit with validation's
    scores."""
    tc = p.cfg.train
    boundary, top, shape = _prefix_split(p, model)
    frozen = FrozenPass(p, Prefix(model.backbone, boundary), boundary)
    with distributed.main_first():
        acts = {s: _features(p, frozen, s, 0, progress) for s in p.splits.refs}
        train_views = [acts["train"]] + _augmented_views(p, frozen, progress)
    y = p.splits.labels
    val = p.batches(RowsDataset(acts["val"], y["val"], shape), tc.batch_size, train=False)
    train = RotatingViews([p.batches(RowsDataset(a, y["train"], shape), tc.batch_size, train=True)
                           for a in train_views])
    net = Classifier(top, model.head).to(p.device, memory_format=torch.channels_last)
    if p.cfg.runtime.sync_bn:
        net = distributed.sync_batch_norm(net, p.device)
    def to_dev(x):
        return x.to(p.device).contiguous(memory_format=torch.channels_last)
    state = fit(net, train, val, to_dev, fit_plan(p, loss_fn, param_groups(net, tc.lr, tc.backbone_lr_scale)), hooks,
                progress)
    result = model.backbone.load_state_dict(top.state_dict(), strict=False)
    assert not result.unexpected_keys, result.unexpected_keys  # top holds a subset of the backbone's modules
    scores = SplitScores(*predict(net, val, to_dev, p.device))
    return TrainResult(state.history, state.best_epoch, {"val": scores})


def backbone_features(p: Prepared, model: Classifier, split: str) -> np.ndarray | None:
    """The pooled backbone features of every image of `split` (split order) from the feature cache, when the
    backbone is the frozen one the cache holds (linear); None otherwise (its trained backbone must run)."""
    if p.strategy.cached != "features":
        return None  # no collective here: under torchrun only rank 0 writes the run's reference and calls this
    return _features(p, FrozenPass(p, model.backbone, images=len(p.splits.refs[split])), split, 0, False)


def scores_from_cache(p: Prepared, model: Classifier, split: str, progress: bool,
                      mirror: bool = False) -> SplitScores | None:
    """Scores of `split` for a model whose frozen part has a cache (linear: the backbone's features; partial:
    the prefix's activations): the frozen outputs are cached views, read (or filled) like the training views,
    and only the trained part runs. With `mirror` (test-time mirroring) the views are each image and its
    mirror and the logits are their mean, as `Mirrored` gives on the images. None for other strategies (and
    for a partial backbone whose prefix cannot be cached): the caller then runs the whole network."""
    mirrored = sum(len(p.splits.refs[s]) for s in ("val", "test") if s in p.splits.refs)
    images = mirrored if mirror else len(p.splits.refs[split])  # what this pass sees, should it miss the cache
    cache = p.strategy.cached
    if cache == "features":
        frozen, trained, shape = FrozenPass(p, model.backbone, images=images), model.head, None
    elif cache == "activations" and p.cfg.cache.cache_frozen:
        try:
            boundary, top, shape = _prefix_split(p, model)
        except ValueError:
            return None
        frozen = FrozenPass(p, Prefix(model.backbone, boundary), boundary, images)
        trained = Classifier(top, model.head).to(p.device, memory_format=torch.channels_last)
    else:
        return None
    views = (0, MIRROR) if mirror else (0,)
    with distributed.main_first():
        arrays = [_features(p, frozen, split, view, progress) for view in views]
    pairs = p.batches(RowsDataset(PairedRows(*arrays), p.splits.labels[split], (len(views), *(shape or (-1,)))),
                      p.cfg.train.batch_size if shape else 1024, train=False)
    def to_dev(x):
        return x.to(p.device)
    return SplitScores(*predict(MeanOfViews(trained), pairs, to_dev, p.device))


class PairedRows:
    """Arrays of equal shape read row by row as one: row i is (a[i], b[i], ...) stacked (memory-mapped stays
    so)."""

    def __init__(self, *arrays: np.ndarray):
        self.arrays = arrays

    def __getitem__(self, i: int | list[int]) -> np.ndarray:
        """Row i as (views, ...); rows [i, j, ...] as (rows, views, ...)."""
        return np.stack([a[i] for a in self.arrays], axis=1 if isinstance(i, list) else 0)


class MeanOfViews(nn.Module):
    """The mean of a network's logits over the views stacked in dimension 1 (an image and its mirror)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return torch.stack([self.net(x[:, v]) for v in range(x.shape[1])]).mean(0)


def _prefix_split(p: Prepared, model: Classifier) -> tuple[str, nn.Module, tuple[int, ...]]:
    """partial's frozen prefix and trainable top (`split_frozen_prefix`), found on two validation images."""
    example = next(iter(p.loader("val", False, 2, shard=False)))[0]
    return split_frozen_prefix(model, p.prepare(example))


def _mirror(image: torch.Tensor) -> torch.Tensor:
    return torch.flip(image, dims=[-1])  # as Mirrored flips a batch's width


def _views(p: Prepared) -> int:
    return p.cfg.cache.feature_views if p.cfg.data.augment else 0


def _augmented_views(p: Prepared, frozen: "FrozenPass", progress: bool) -> list[np.ndarray]:
    """The cached augmented views 1..feature_views of the train split (none when augmentation is off)."""
    return [_features(p, frozen, "train", v, progress) for v in range(1, _views(p) + 1)]


class FrozenPass:
    """A cached path's frozen network (the backbone, or partial's prefix) on the engine `runtime.engine` picks:
    chosen at the first cache miss, on that batch of real images, and kept for the other splits and views."""

    def __init__(self, p: Prepared, net: nn.Module, boundary: str = "", images: int | None = None):
        self.p, self.net, self.boundary = p, net, boundary
        self.images = images  # how many images this pass will see (the engine's choice weighs its export)
        self.runner = None

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        """Features of a uint8 batch (normalised inside: by the engine's graph, or in eager PyTorch)."""
        if self.runner is None:
            p = self.p
            refs = p.splits.refs
            images = self.images or sum(len(r) for r in refs.values()) + _views(p) * len(refs["train"])
            stats = p.preprocess.stats()
            exportable = Prefix(self.net.backbone, self.boundary, early_exit=False) if self.boundary else self.net
            runner = frozen_runner(OnPixels(exportable, *stats), pixels, p.cfg.runtime.engine, p.cache_dir, images,
                                   self.boundary)
            # eager keeps the prefix's early exit
            self.runner = OnPixels(self.net, *stats).to(pixels.device).eval() if runner.name == "torch" else runner
        return self.runner(pixels)


class RowsDataset(torch.utils.data.Dataset):
    """Rows of a (memory-mapped) 2-D array, reshaped to `shape`, with labels; a loader fetches a whole batch in
    one read of the array (`__getitems__`), not row by row."""

    def __init__(self, array: np.ndarray, labels: np.ndarray, shape: tuple[int, ...]):
        self.array, self.labels, self.shape = array, labels, shape

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return torch.from_numpy(np.array(self.array[i])).view(self.shape), int(self.labels[i])

    def __getitems__(self, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.from_numpy(np.array(self.array[rows])).view(len(rows), *self.shape)
        return x, torch.from_numpy(np.asarray(self.labels[rows], dtype=np.int64))

    @staticmethod
    def collate(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return batch  # `__getitems__` made the batch


class RotatingViews:
    """One loader per cached view; epoch e (from 1) uses view (e - 1) mod views."""

    def __init__(self, loaders: list[DataLoader]):
        self.loaders, self.epoch = loaders, 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        for loader in self.loaders:
            distributed.set_epoch(loader, epoch)

    @property
    def current(self) -> DataLoader:
        return self.loaders[(self.epoch - 1) % len(self.loaders)]

    def __len__(self) -> int:
        return len(self.current)

    def __iter__(self):
        return iter(self.current)


def _features(p: Prepared, frozen: FrozenPass, split: str, view: int | str, progress: bool) -> np.ndarray:
    """Features of one split (or activations at `boundary`); view 0 is the plain image, views 1.. are
    seeded augmentations, view MIRROR each image's horizontal mirror (test-time augmentation)."""
    refs = p.splits.refs[split]
    key = feature_key(p.store.key, refs, p.spec.name, weights_id(p.spec, p.weights), p.size, p.in_chans,
                      p.preprocess.mean, p.preprocess.std, view,
                      p.cfg.data.hflip if view and view != MIRROR else None, frozen.boundary)

    def compute() -> np.ndarray:
        transform = _mirror if view == MIRROR else train_transform(p.size, p.cfg.data.hflip) if view else None
        batch = CPU_EXTRACT_BATCH if p.device.type == "cpu" else 128
        frozen.net.to(memory_format=torch.channels_last)
        # the same views every run (so the cache key holds), and the run's own RNG stream untouched,
        # so a cache hit and a miss train identically
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(1000 + (0 if view == MIRROR else view))
            return extract(frozen, p.loader(split, False, batch, transform, shard=False), p.to_device, p.device,
                           f"features {split}" + (f" view {view}" if view else ""), progress)

    array, hit = cached(p.cache_dir, key, len(refs), compute)
    log.info("features %s view %s: %s (%d x %d)", split, view, "cache hit" if hit else "computed", *array.shape)
    return array
