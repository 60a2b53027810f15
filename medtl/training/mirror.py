"""Test-time augmentation after training (eval.tta): the mean of the logits of each image and of its mirror.

`hflip` scores validation and test that way; `auto` scores validation both ways and keeps the mirror only
when validation says it helps (by train.monitor, validation AUCs within `AUC_TIE` tied and won by the lower
loss). Only validation is looked at here: test is scored once afterwards, the chosen way (`score_split`,
called by the run's finalize phase). The record says what was applied and why; the run's config in its
checkpoint (which `medtl predict`, `evaluate`, `serve` and `export` follow) holds `hflip` or `none`. Every
process runs this (sharded loaders, probabilities gathered), so all reach the same decision.
"""

from __future__ import annotations

import dataclasses
import logging

from medtl.evaluation.metrics import score
from medtl.models.strategies import Classifier, Mirrored
from medtl.training.cached import scores_from_cache
from medtl.training.loop import predict
from medtl.training.prepared import Prepared
from medtl.training.results import AUC_TIE, SplitScores, beats

log = logging.getLogger(__name__)


def mirrored(p: Prepared, model: Classifier, val: SplitScores, progress: bool) -> tuple[Prepared, SplitScores, dict]:
    """(Prepared with eval.tta resolved to hflip or none, validation's scores the chosen way, what was applied
    and why), from validation's plain scores `val`."""
    tta = p.cfg.eval.tta
    if tta == "none" or not p.cfg.data.hflip:
        why = "eval.tta=none" if tta == "none" else "eval.tta=auto, but data.hflip=false: no mirrored images"
        return _resolved(p, "none"), val, {"applied": "none", "reason": why}
    mirror = _mirrored(p, model, "val", progress)
    record = {"applied": "hflip", "reason": "eval.tta=hflip"}
    if tta == "auto":
        plain, mirrored_val = _val_scores(p, val), _val_scores(p, mirror)
        keep = beats(mirrored_val, plain, p.cfg.train.monitor)
        record = {"applied": "hflip" if keep else "none",
                  "reason": f"eval.tta=auto: mirrored validation {'better' if keep else 'not better'} by "
                            f"{p.cfg.train.monitor} (AUCs within {AUC_TIE} tie, the lower loss wins); test was "
                            "not looked at", "plain_val": plain, "mirrored_val": mirrored_val}
        log.info("tta: mirrored val AUC %.4f loss %.4f, plain %.4f %.4f: %s", mirrored_val["auc"],
                 mirrored_val["loss"], plain["auc"], plain["loss"], "kept" if keep else "not kept")
        if not keep:
            return _resolved(p, "none"), val, record
    return _resolved(p, "hflip"), mirror, record


def score_split(p: Prepared, model: Classifier, split: str, progress: bool) -> SplitScores:
    """`split` scored the way `p.cfg.eval.tta` (resolved: hflip or none) says: from the frozen part's cache
    where the strategy has one (linear, partial), else the whole network on the images."""
    if p.cfg.eval.tta == "hflip":
        return _mirrored(p, model, split, progress)
    cached = scores_from_cache(p, model, split, progress)
    return cached if cached is not None else _predict(p, model, split, progress)


def _mirrored(p: Prepared, model: Classifier, split: str, progress: bool) -> SplitScores:
    """Mirrored scores of `split`: from the frozen part's cache where the strategy has one (linear, partial),
    else the whole network on each image and its mirror."""
    cached = scores_from_cache(p, model, split, progress, mirror=True)
    return cached if cached is not None else _predict(p, Mirrored(model), split, progress)


def _predict(p: Prepared, net, split: str, progress: bool) -> SplitScores:
    mirror = " (mirrored too)" if isinstance(net, Mirrored) else ""
    return SplitScores(*predict(net, p.loader(split, False, p.cfg.train.batch_size), p.prepare, p.device,
                                f"predict {split}{mirror}", progress))


def _val_scores(p: Prepared, scores: SplitScores) -> dict:
    m = score(scores.labels, scores.probs, p.splits.classes)
    return {"auc": float(m["auc"]), "loss": float(m["loss"])}


def _resolved(p: Prepared, tta: str) -> Prepared:
    return dataclasses.replace(p, cfg=dataclasses.replace(p.cfg, eval=dataclasses.replace(p.cfg.eval, tta=tta)))
