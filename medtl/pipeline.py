"""One training run from config to run folder, and re-scoring a saved run on any data.

Everything that can fail on bad input (data, backbone, weights, options) is checked before the run
folder is created, so a failed start leaves nothing half-written behind.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from medtl import distributed
from medtl.audit import audit, warnings_for
from medtl.backbones import BackboneSpec, get_spec, weights_id
from medtl.config import RunConfig, dump_yaml, from_dict, to_dict
from medtl.data import (DataSplits, StoreDataset, class_weights, discover, normalize, train_transform)
from medtl.errors import MedtlError
from medtl.features import cached, feature_key
from medtl.images import Decoding, ImageStore, build_store, check_failures, default_cache_dir
from medtl.metrics import choose_threshold, score
from medtl.resume import STATE_FILE, state_digest
from medtl.report import (atomic_write_text, format_metrics, plot_curves, write_history, write_json,
                          write_predictions)
from medtl.strategies import (Classifier, Prefix, build_classifier, effective_weights, param_groups,
                              split_frozen_prefix)
from medtl.train import (EpochHook, deterministic, extract, fit, make_loss, pick_device, predict, seed_everything,
                         tune_allocator)

log = logging.getLogger(__name__)

CHANNEL_MODES = ("replicate", "adapt")
CPU_EXTRACT_BATCH = 16  # measured: 1.7x the img/s of batch 64 for Lite0 at 224 px on a 2-core AVX2 CPU


@dataclass
class Prepared:
    """Everything a run needs, validated, before anything is written."""

    cfg: RunConfig
    spec: BackboneSpec
    weights: str
    splits: DataSplits
    store: ImageStore
    size: int
    in_chans: int
    device: torch.device
    cache_dir: Path
    audit_notes: list[str] = field(default_factory=list)
    state_path: Path | None = None  # per-epoch training state, for --resume

    @property
    def binary(self) -> bool:
        return len(self.splits.classes) == 2

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
        x = normalize(x.to(self.device, non_blocking=True), self.spec.mean, self.spec.std)
        return x.contiguous(memory_format=torch.channels_last)


def prepare(cfg: RunConfig, progress: bool = True, device: torch.device | None = None) -> Prepared:
    """Validate the config and data, decode images (cached; under torchrun by the first process of each node
    while the others wait); raises MedtlError on bad input."""
    if cfg.data.channels not in CHANNEL_MODES:
        raise MedtlError(f"data.channels={cfg.data.channels!r}; valid: {', '.join(CHANNEL_MODES)}")
    spec = get_spec(cfg.model.backbone)
    weights = effective_weights(cfg.model)
    device = device or pick_device(cfg.train.device)
    if device.type == "cpu" and cfg.train.tune_malloc:
        log.info("glibc allocator tuned (no mmap, no trim): %s", tune_allocator())
    torch.set_num_threads(cfg.train.threads or distributed.default_threads())
    splits = discover(cfg.data, cfg.data.split_seed)
    for note in splits.notes:
        log.info("split: %s", note)
    size = cfg.data.image_size or spec.input_size
    cache_dir = default_cache_dir(cfg.data.cache_dir)
    decoding = Decoding.of(cfg.data)
    decoding.check()
    with distributed.main_first():
        store = build_store(splits.all_refs(), size, cache_dir, progress, decoding)
    check_failures({**splits.rejected, **store.failed}, cfg.data.strict)
    splits.drop(set(store.failed))
    for split, y in splits.labels.items():
        counts = np.bincount(y, minlength=len(splits.classes))
        log.info("%s: %d images (%s)", split, len(y), ", ".join(f"{c} {n}" for c, n in zip(splits.classes, counts)))
    if len(np.unique(splits.labels["train"])) < 2:
        raise MedtlError(f"train split of {cfg.data.path} has one class after skipping unreadable images")
    in_chans = 1 if cfg.data.channels == "adapt" else 3
    notes = warnings_for(audit(splits, perceptual=False)) if cfg.data.audit else []
    for note in notes:
        log.warning("audit: %s", note)
    return Prepared(cfg, spec, weights, splits, store, size, in_chans, device, cache_dir, notes)


def run(cfg: RunConfig, progress: bool = True, on_epoch: EpochHook | None = None, resume: bool = False) -> Path:
    """Train and evaluate per `cfg`; returns the run folder. `on_epoch(epoch, val_metrics)` is called after
    each epoch (hyperparameter search reports and prunes through it). Under torchrun every process calls
    this; they train together and rank 0 writes the run folder."""
    with distributed.session(pick_device(cfg.train.device)) as device, deterministic(cfg.train.deterministic):
        world = distributed.current()
        return _run(cfg, progress and world.main, on_epoch, resume, device, world)


def _run(cfg: RunConfig, progress: bool, on_epoch: EpochHook | None, resume: bool, device: torch.device,
         world: distributed.World) -> Path:
    seed_everything(cfg.train.seed)
    p = prepare(cfg, progress, device)
    num_out = 1 if p.binary else len(p.splits.classes)
    model = build_classifier(cfg.model, num_out, p.in_chans).to(p.device)  # the same on every process
    if world.rank:  # other augmentations (and dropout) than rank 0's; rank 0 draws as one process would
        seed_everything(cfg.train.seed + world.rank)
    run_dir = distributed.broadcast((_resume_dir(cfg) if resume else _make_run_dir(cfg)) if world.main else None)
    p.state_path = run_dir / STATE_FILE
    if not world.main:
        _train(p, model, progress, on_epoch)
        return run_dir
    if not resume:
        p.state_path.unlink(missing_ok=True)  # a killed earlier attempt in this folder: start over
    handler = _attach_log(run_dir / "train.log")
    try:
        if not resume:
            atomic_write_text(run_dir / "config.yaml", dump_yaml(cfg))
        if p.audit_notes:
            atomic_write_text(run_dir / "audit.txt", "".join(f"warning: {n}\n" for n in p.audit_notes))
        skipped = {**p.splits.rejected, **p.store.failed}
        if skipped:
            atomic_write_text(run_dir / "skipped.txt", "".join(f"{r}\t{e}\n" for r, e in skipped.items()))
        log.info("run folder %s; backbone %s (weights %s), strategy %s, %d px, device %s%s", run_dir,
                 p.spec.name, p.weights, cfg.model.strategy, p.size, p.device,
                 f", {world.size} processes (DDP)" if world.active else "")
        start = time.perf_counter()
        history, best_epoch, probs = _train(p, model, progress, on_epoch)
        seconds = time.perf_counter() - start
        _finish(p, model, run_dir, history, best_epoch, probs, seconds)
        p.state_path.unlink(missing_ok=True)  # the run is complete: the checkpoint holds its result
    finally:
        logging.getLogger("medtl").removeHandler(handler)
        handler.close()
    return run_dir


def _train(p: Prepared, model: Classifier, progress: bool, on_epoch: EpochHook | None = None):
    """Train per strategy; returns (history, best epoch, {split: (probs, labels)})."""
    tc = p.cfg.train
    weights = class_weights(p.splits.labels["train"], len(p.splits.classes)) if tc.class_weights else None
    loss_fn = make_loss(p.binary, weights)
    if p.cfg.model.strategy == "linear":
        return _train_head_on_features(p, model, loss_fn, progress, on_epoch)
    if p.cfg.model.strategy == "partial" and tc.cache_frozen:
        try:
            return _train_top_on_activations(p, model, loss_fn, progress, on_epoch)
        except ValueError as exc:
            log.info("partial: training end to end, the frozen prefix cannot be cached (%s)", exc)
    model.to(memory_format=torch.channels_last)  # as the inputs: measured faster on CPU, no re-layout in DDP
    if tc.sync_bn:
        model = distributed.sync_batch_norm(model, p.device)
    transform = train_transform(p.size, p.cfg.data.hflip) if p.cfg.data.augment else None
    train = p.loader("train", True, tc.batch_size, transform)
    val = p.loader("val", False, tc.batch_size)
    groups = param_groups(model, tc.lr, tc.backbone_lr_scale)
    history, _, best_epoch = fit(model, train, val, p.prepare, loss_fn, tc, p.device, p.splits.classes, groups,
                                 progress, on_epoch, p.state_path)
    probs = {s: predict(model, p.loader(s, False, tc.batch_size), p.prepare, p.device, f"predict {s}", progress)
             for s in ("val", "test") if s in p.splits.refs}
    return history, best_epoch, probs


def _train_head_on_features(p: Prepared, model: Classifier, loss_fn, progress: bool, on_epoch=None):
    """linear: backbone features computed once (cached on disk), then the head trains on them."""
    tc = p.cfg.train
    with distributed.main_first():
        feats = {s: _features(p, model, s, view=0, progress=progress) for s in p.splits.refs}
        train_x = [feats["train"]] + _augmented_views(p, model, progress)
    y = {s: torch.from_numpy(p.splits.labels[s]) for s in p.splits.refs}
    train_ds = TensorDataset(torch.from_numpy(np.concatenate(train_x)), y["train"].repeat(len(train_x)))
    batches = {s: p.batches(TensorDataset(torch.from_numpy(np.array(feats[s])), y[s]), 1024, train=False)
               for s in p.splits.refs}
    train = p.batches(train_ds, tc.batch_size, train=True)
    def to_dev(x):
        return x.to(p.device)
    history, _, best_epoch = fit(model.head, train, batches["val"], to_dev, loss_fn, tc, p.device,
                                 p.splits.classes, progress=progress, on_epoch=on_epoch, state_path=p.state_path)
    probs = {s: predict(model.head, batches[s], to_dev, p.device) for s in ("val", "test") if s in batches}
    return history, best_epoch, probs


def _train_top_on_activations(p: Prepared, model: Classifier, loss_fn, progress: bool, on_epoch=None):
    """partial: the frozen prefix runs once per image and view (cached on disk); the top stages and the
    head train on its activations, one augmented view per epoch in turn."""
    tc = p.cfg.train
    example = next(iter(p.loader("val", False, 2, shard=False)))[0]
    boundary, top, shape = split_frozen_prefix(model, p.prepare(example))
    prefix = Prefix(model.backbone, boundary)
    with distributed.main_first():
        acts = {s: _features(p, prefix, s, 0, progress, boundary) for s in p.splits.refs}
        train_views = [acts["train"]] + _augmented_views(p, prefix, progress, boundary)
    y = {s: p.splits.labels[s] for s in p.splits.refs}
    batches = {s: p.batches(RowsDataset(acts[s], y[s], shape), tc.batch_size, train=False) for s in p.splits.refs}
    train = RotatingViews([p.batches(RowsDataset(a, y["train"], shape), tc.batch_size, train=True)
                           for a in train_views])
    net = Classifier(top, model.head).to(p.device, memory_format=torch.channels_last)
    if tc.sync_bn:
        net = distributed.sync_batch_norm(net, p.device)
    def to_dev(x):
        return x.to(p.device).contiguous(memory_format=torch.channels_last)
    groups = param_groups(net, tc.lr, tc.backbone_lr_scale)
    history, _, best_epoch = fit(net, train, batches["val"], to_dev, loss_fn, tc, p.device, p.splits.classes, groups,
                                 progress, on_epoch, p.state_path)
    result = model.backbone.load_state_dict(top.state_dict(), strict=False)
    assert not result.unexpected_keys, result.unexpected_keys  # top holds a subset of the backbone's modules
    probs = {s: predict(net, batches[s], to_dev, p.device) for s in ("val", "test") if s in batches}
    return history, best_epoch, probs


def _augmented_views(p: Prepared, model: Classifier | Prefix, progress: bool, boundary: str = "") -> list[np.ndarray]:
    """The cached augmented views 1..feature_views of the train split (none when augmentation is off)."""
    views = p.cfg.train.feature_views if p.cfg.data.augment else 0
    return [_features(p, model, "train", v, progress, boundary) for v in range(1, views + 1)]


class RowsDataset(torch.utils.data.Dataset):
    """Rows of a (memory-mapped) 2-D array, reshaped to `shape`, with labels."""

    def __init__(self, array: np.ndarray, labels: np.ndarray, shape: tuple[int, ...]):
        self.array, self.labels, self.shape = array, labels, shape

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return torch.from_numpy(np.array(self.array[i])).view(self.shape), int(self.labels[i])


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


def _features(p: Prepared, model: Classifier | Prefix, split: str, view: int, progress: bool,
              boundary: str = "") -> np.ndarray:
    """Features of one split (or activations at `boundary`); view 0 is the plain image, views 1.. are
    seeded augmentations."""
    refs = p.splits.refs[split]
    key = feature_key(p.store.key, refs, p.spec.name, weights_id(p.spec, p.weights), p.size, p.in_chans,
                      p.spec.mean, p.spec.std, view, p.cfg.data.hflip if view else None, boundary)

    def compute() -> np.ndarray:
        transform = train_transform(p.size, p.cfg.data.hflip) if view else None
        batch = CPU_EXTRACT_BATCH if p.device.type == "cpu" else 128
        net = model if isinstance(model, Prefix) else model.backbone
        net.to(memory_format=torch.channels_last)
        # the same views every run (so the cache key holds), and the run's own RNG stream untouched,
        # so a cache hit and a miss train identically
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(1000 + view)
            return extract(net, p.loader(split, False, batch, transform, shard=False), p.prepare, p.device,
                           f"features {split}" + (f" view {view}" if view else ""), progress)

    array, hit = cached(p.cache_dir, key, len(refs), compute)
    log.info("features %s view %d: %s (%d x %d)", split, view, "cache hit" if hit else "computed", *array.shape)
    return array


def _finish(p: Prepared, model: Classifier, run_dir: Path, history, best_epoch, probs, seconds) -> None:
    classes = p.splits.classes
    val_p, val_y = probs["val"]
    threshold = choose_threshold(val_y, val_p, p.cfg.train.threshold) if p.binary else 0.5
    metrics = {"best_epoch": best_epoch, "epochs_run": len(history), "train_seconds": seconds,
               "threshold": threshold, "threshold_method": p.cfg.train.threshold, "classes": classes,
               "image_size": p.size, "split_sizes": {s: len(r) for s, r in p.splits.refs.items()},
               "splits": {s: score(y, pr, classes, threshold) for s, (pr, y) in probs.items()}}
    for split, m in metrics["splits"].items():
        log.info(format_metrics(split, m))
    for split, (pr, y) in probs.items():
        write_predictions(run_dir / f"predictions_{split}.csv", p.splits.refs[split], y, pr, classes, threshold)
    metrics["weights_sha256"] = save_checkpoint(run_dir / "checkpoint.pt", model, p, threshold)
    write_history(run_dir / "history.csv", history)
    plot_curves(run_dir / "curves.png", history, f"{p.spec.name} {p.cfg.model.strategy}")
    write_json(run_dir / "metrics.json", metrics)  # last: its presence marks a finished run (studies resume on it)
    log.info("training took %.1f s; best epoch %d; threshold %.4f (chosen on validation by %s)",
             seconds, best_epoch, threshold, p.cfg.train.threshold)


def save_checkpoint(path: Path, model: Classifier, p: Prepared, threshold: float) -> str:
    """Weights plus everything needed to rebuild and use the model; loads with weights_only=True.
    Returns the digest of its weights (the same weights give the same digest, however the file is laid out)."""
    state = {"model": model.state_dict(), "config": to_dict(p.cfg), "classes": p.splits.classes,
             "threshold": threshold, "image_size": p.size, "in_chans": p.in_chans,
             "mean": list(p.spec.mean), "std": list(p.spec.std), "backbone": p.spec.name}
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return state_digest(state["model"])


def load_run(run_dir: str | Path) -> tuple[dict, RunConfig, Classifier]:
    """Checkpoint, config and model (eval mode) of a run folder."""
    path = Path(run_dir) / "checkpoint.pt"
    if not path.is_file():
        raise MedtlError(f"{path} not found; pass a run folder written by `medtl train`")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    cfg = from_dict(RunConfig, ckpt["config"], where=str(path))
    num_out = 1 if len(ckpt["classes"]) == 2 else len(ckpt["classes"])
    model = build_classifier(cfg.model, num_out, ckpt["in_chans"], load_weights=False)
    model.load_state_dict(ckpt["model"])
    return ckpt, cfg, model.eval()


def evaluate(run_dir: str | Path, data: str, split: str = "test", progress: bool = True) -> dict:
    """Re-score a saved run on a split of any data set with the run's classes and threshold."""
    ckpt, cfg, model = load_run(run_dir)
    data_cfg = from_dict(type(cfg.data), {**to_dict(cfg.data), "path": data, "image_size": ckpt["image_size"],
                                          "subset_per_class": None})
    p = prepare(RunConfig(data=data_cfg, model=cfg.model, train=cfg.train), progress)
    if p.splits.classes != ckpt["classes"]:
        raise MedtlError(f"{data} has classes {p.splits.classes} but the model was trained on {ckpt['classes']}; "
                         "pass data with the same class folders")
    if split not in p.splits.refs:
        raise MedtlError(f"{data} has no '{split}' split; available: {', '.join(p.splits.refs)}")
    model = model.to(p.device)
    pr, y = predict(model, p.loader(split, False, cfg.train.batch_size), p.prepare, p.device, f"predict {split}",
                    progress)
    return score(y, pr, ckpt["classes"], ckpt["threshold"])


def _resume_dir(cfg: RunConfig) -> Path:
    run_dir = Path(cfg.out) / cfg.name
    if (run_dir / "metrics.json").exists():
        raise MedtlError(f"run {run_dir} has already finished (metrics.json exists); nothing to resume")
    return run_dir


def _make_run_dir(cfg: RunConfig) -> Path:
    name = cfg.name or f"{cfg.model.backbone}-{cfg.model.strategy}-{datetime.now():%Y%m%d-%H%M%S}"
    run_dir = Path(cfg.out) / name
    if (run_dir / "checkpoint.pt").exists():
        raise MedtlError(f"run folder {run_dir} already holds a finished run; pass another --name or --out")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def _attach_log(path: Path) -> logging.Handler:
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    logger = logging.getLogger("medtl")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    return handler
