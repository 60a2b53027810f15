"""Everything a run needs, checked and decoded before anything is written: config, backbone, weights, data
splits, the decoded image store and the preprocessing that travels with the weights (`Prepared`).

Discovery, carving, content keys and the audit happen once per run; another image size is `Prepared.at_size`.
Each image file is read once per run (`images._ReadOnce`): its hash, its decoding and the audit share the bytes;
a rerun reads none (its digest and audit facts come from data/facts_cache.py, its pixels from the image cache)."""

from __future__ import annotations

import logging

import numpy as np
import torch

from medtl.core.config import RunConfig
from medtl.core.errors import MedtlError
from medtl.data import facts_cache
from medtl.data.audit import audit, collect, warnings_for
from medtl.data.images import Decoding, build_store, check_failures
from medtl.data.preprocess import Preprocess
from medtl.data.sources import discover
from medtl.models.backbones import get_spec
from medtl.models.strategies import effective_weights
from medtl.training import distributed
from medtl.training.prepared import Prepared
from medtl.training.runtime import set_up

__all__ = ["Prepared", "prepare"]

log = logging.getLogger(__name__)


def prepare(cfg: RunConfig, progress: bool = True, device: torch.device | None = None,
            whole_tree_as: str | None = None) -> Prepared:
    """Check the backbone, weights and data, decode images (cached; under torchrun by the first process of
    each node while the others wait); raises MedtlError on bad input."""
    spec = get_spec(cfg.model.backbone)
    weights = effective_weights(cfg.model)
    device = set_up(cfg.runtime, device)
    cache_dir = facts_cache.use_cache_root(cfg.cache.dir)  # each image's digest and audit facts, kept across runs
    splits = discover(cfg.data, cfg.data.split_seed, whole_tree_as)
    for note in splits.notes:
        log.info("split: %s", note)
    decoding = Decoding.of(cfg.data)
    pre = Preprocess(cfg.data.image_size or spec.input_size, 1 if cfg.data.channels == "adapt" else 3,
                     spec.mean, spec.std, decoding)
    with distributed.main_first():
        store = build_store(splits.all_refs(), pre.size, cache_dir, progress, decoding)
    check_failures({**splits.rejected, **store.failed}, cfg.data.strict)
    splits.drop(set(store.failed))
    _log_counts(splits)
    if "train" in splits.labels and len(np.unique(splits.labels["train"])) < 2:
        raise MedtlError(f"train split of {cfg.data.path} has one class after skipping unreadable images")
    # with perceptual hashes: near copies across splits reported before training; the run keeps the hashes
    # (training/finalize.py: image_keys.json, and its deduplicated test metrics leave copies in train or val out)
    facts = collect(splits, perceptual=True) if cfg.data.audit else []
    notes = warnings_for(audit(splits, perceptual=True, facts=facts)) if cfg.data.audit else []
    for note in notes:
        log.warning("audit: %s", note)
    return Prepared(cfg, spec, weights, splits, store, preprocess=pre, device=device, cache_dir=cache_dir,
                    audit_notes=notes, facts={f.ref: f for f in facts})


def _log_counts(splits) -> None:
    for split, y in splits.labels.items():
        counts = np.bincount(y, minlength=len(splits.classes))
        log.info("%s: %d images (%s)", split, len(y), ", ".join(f"{c} {n}" for c, n in zip(splits.classes, counts)))
