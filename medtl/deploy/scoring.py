"""One scoring pass of a saved run over labelled data, without the trainer: the data found as `medtl train`
finds it (any layout), decoded with the run's preprocessing, the data's class names mapped onto the run's,
and per image the probabilities (the run's temperature applied) and the pooled backbone features.

The features (`Scored.features`, (N, D) float32: the classifier's `backbone(x)` output, of the unmirrored
image) are what a data-set shift test or a per-image distance needs; they cost nothing extra here."""

from __future__ import annotations

import logging
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from medtl.core.device import pick_device
from medtl.core.errors import MedtlError
from medtl.core.logs import progress as progress_of
from medtl.core.runfolder import RunFolder
from medtl.data import facts_cache
from medtl.data.datasets import StoreDataset
from medtl.data.images import build_store, check_failures
from medtl.deploy.site_data import find_split, map_classes, parse_class_map
from medtl.evaluation.uncertainty import apply_temperature
from medtl.models.checkpoint import Checkpoint
from medtl.models.strategies import to_probs

log = logging.getLogger(__name__)


@dataclass
class Scored:
    """The evaluated images of one split, in order, with what the run's model says of them."""

    refs: list[str]
    labels: np.ndarray  # indices into `classes` (the run's)
    probs: np.ndarray  # binary: P(positive) (N,); multiclass (N, K); the run's temperature applied
    features: np.ndarray  # (N, D) float32 pooled backbone features
    classes: list[str]  # the run's classes
    class_map: dict[str, str]  # the data's class name -> the run's, for every class found in the data
    skipped: dict[str, str] = field(default_factory=dict)  # unreadable images -> why
    groups: dict[str, str] = field(default_factory=dict)  # ref -> patient, when the data name patients
    patients: dict = field(default_factory=dict)  # where the keys came from (`DataSplits.patients`)

    def clusters(self) -> list[str] | None:
        """Each image's patient key (one without is its own), or None when the data name no patients."""
        return [self.groups.get(r, r) for r in self.refs] if self.groups else None

    @property
    def binary(self) -> bool:
        return len(self.classes) == 2


def score_data(run_dir: str | Path, data: str | Path, split: str = "test", classes: str | dict | None = None,
               progress: bool = True, device: str | None = None, reveal_ids: bool | None = None) -> Scored:
    """Score every readable image of `split` of `data` with the run's model, preprocessing and temperature;
    patient keys as pseudonyms unless `reveal_ids` (None: the run's data.reveal_ids)."""
    ckpt = Checkpoint.load(RunFolder(run_dir).require_checkpoint())
    data, cache_dir = str(data), facts_cache.use_cache_root(ckpt.config.cache.dir)
    splits = find_split(ckpt, data, split, reveal_ids)
    mapping = map_classes(data, splits.classes, ckpt.classes, parse_class_map(classes))
    index = np.array([ckpt.classes.index(mapping[c]) for c in splits.classes])
    refs, labels = splits.refs[split], index[splits.labels[split]]
    pre = ckpt.preprocess
    store = build_store(refs, pre.size, cache_dir, progress, pre.decoding)
    skipped = {**splits.rejected, **store.failed}
    check_failures(skipped, ckpt.config.data.strict)
    keep = [i for i, r in enumerate(refs) if r not in store.failed]
    if not keep:
        raise MedtlError(f"no readable image in the '{split}' split of {data}; `medtl audit {data}` lists why")
    refs, labels = [refs[i] for i in keep], labels[keep]
    dev = pick_device(device or ckpt.config.runtime.device)
    probs, features = _forward(ckpt, store, refs, labels, dev, progress)
    if ckpt.temperature != 1.0:  # the threshold was chosen on the calibrated probabilities
        probs = apply_temperature(probs, ckpt.temperature)
    groups = {r: splits.groups[r] for r in refs if r in splits.groups}
    return Scored(refs, labels, probs, features, list(ckpt.classes), class_map=mapping, skipped=skipped, groups=groups,
                  patients=splits.patients())


@torch.inference_mode()
def _forward(ckpt: Checkpoint, store, refs: list[str], labels: np.ndarray, device: torch.device,
             progress: bool) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and pooled features; with the run's test-time mirroring, the logits of image and mirror
    averaged (the features are the unmirrored image's)."""
    model = ckpt.build().to(device)
    mirror = ckpt.config.eval.tta == "hflip"
    rows = np.array([store.row(r) for r in refs], dtype=np.int64)
    loader = DataLoader(StoreDataset(store.array, rows, labels, ckpt.preprocess.in_chans),
                        batch_size=ckpt.config.train.batch_size, shuffle=False)
    cast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    probs, features = [], []
    for x, _ in progress_of(loader, "score", progress, unit="batch"):
        x = ckpt.preprocess.normalize(x.to(device))
        with cast:
            f = model.backbone(x)
            logits = model.head(f)
            if mirror:
                logits = (logits + model(torch.flip(x, dims=[3]))) / 2
        probs.append(to_probs(logits).cpu())
        features.append(f.float().cpu())
    return torch.cat(probs).numpy(), torch.cat(features).numpy()
