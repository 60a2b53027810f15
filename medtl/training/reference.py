"""At the end of training: the run's `FeatureReference` (evaluation/shift.py), so that shift scores and
referral work later without the training data.

`save_reference(p, model, folder, val_probs)` is called by the run after its probabilities are final
(temperature applied) and before the checkpoint is written; `reference_for_run(run_dir)` makes one for a run
that finished before medtl kept it, from the training data its config names.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from medtl.core.config import from_dict, to_dict
from medtl.core.runfolder import RunFolder
from medtl.data.datasets import StoreDataset
from medtl.evaluation.conformal import nonconformity
from medtl.evaluation.shift import REFERENCE_FILE, SAMPLE, FeatureReference
from medtl.models.checkpoint import Checkpoint
from medtl.models.reference import logits_and_features
from medtl.models.strategies import Classifier, to_probs
from medtl.training.cached import backbone_features
from medtl.training.prepare import prepare
from medtl.training.prepared import Prepared

log = logging.getLogger(__name__)


def _features(p: Prepared, model: Classifier, split: str, index: np.ndarray) -> np.ndarray:
    """Pooled backbone features of the images `index` of `split`: read from the feature cache when the backbone
    is the frozen, cached one (linear: a warm rerun runs no network), else from a pass of the model."""
    cached = backbone_features(p, model, split)
    return cached[index] if cached is not None else _pass(p, model, split, index, False)[1]


def _pass(p: Prepared, model: Classifier, split: str, index: np.ndarray, tta: bool) -> tuple[np.ndarray, np.ndarray]:
    """(logits, features) of the images `index` of `split`, in that order, in this process alone."""
    refs = [p.splits.refs[split][i] for i in index]
    rows = np.array([p.store.row(r) for r in refs], dtype=np.int64)
    ds = StoreDataset(p.store.array, rows, p.splits.labels[split][index], p.in_chans)
    loader = DataLoader(ds, batch_size=p.cfg.train.batch_size, shuffle=False, num_workers=0)
    was_training = model.training
    try:
        return logits_and_features(model, loader, p.prepare, tta)
    finally:
        model.train(was_training)


def _sample(n: int, rng: np.random.Generator) -> np.ndarray:
    return np.sort(rng.choice(n, SAMPLE, replace=False)) if n > SAMPLE else np.arange(n)


def save_reference(p: Prepared, model: Classifier, run_folder: str | Path, val_probs: np.ndarray | None = None,
                   temperature: float = 1.0) -> Path:
    """Write `reference.npz` into the run folder: features of a seeded sample (<= SAMPLE) of training and of
    validation images, and the conformal scores of every validation image, from `val_probs` (the run's final
    validation probabilities, in split order: temperature and test-time augmentation applied) or, without
    them, from this pass's logits (with `temperature`, and the run's eval.tta)."""
    rng = np.random.default_rng(p.cfg.train.seed)
    tta = p.cfg.eval.tta == "hflip"
    train_feats = _features(p, model, "train", _sample(len(p.splits.refs["train"]), rng))
    labels = p.splits.labels["val"]
    if val_probs is None:
        logits, val_all = _pass(p, model, "val", np.arange(len(labels)), tta)
        val_probs = to_probs(torch.from_numpy(logits) / temperature).numpy()
        val_feats = val_all[_sample(len(labels), rng)]
    else:
        val_feats = _features(p, model, "val", _sample(len(labels), rng))
    ref = FeatureReference.build(train_feats, val_feats, nonconformity(val_probs, labels))
    path = ref.save(Path(run_folder) / REFERENCE_FILE)
    log.info("feature reference: %d training and %d validation images, %d calibration scores -> %s",
             len(ref.train), len(ref.val), len(ref.cal_scores), path.name)
    return path


def reference_for_run(run_dir: str | Path, progress: bool = False) -> Path:
    """`reference.npz` for a finished run made before medtl kept one, from the data its config names (the
    same splits: discovery is seeded by the config), with the run's image size and decoding."""
    folder = RunFolder(run_dir)
    ckpt = Checkpoint.load(folder.checkpoint)
    cfg = ckpt.config
    data = from_dict(type(cfg.data), {**to_dict(cfg.data), "image_size": ckpt.preprocess.size,
                                      "fast_jpeg": ckpt.preprocess.decoding.fast_jpeg})
    p = prepare(dataclasses.replace(cfg, data=data), progress)
    model = ckpt.build().to(p.device)
    return save_reference(p, model, folder.path, temperature=ckpt.temperature)
