"""Test-time augmentation after training (train.tta): the mean of the logits of each image and of its mirror.

`hflip` scores validation and test that way; `auto` scores validation both ways and keeps the mirror only
when validation says it helps (by train.monitor, validation AUCs within `AUC_TIE` tied and won by the lower
loss), then scores test once, the chosen way. With tta set, training returns validation's probabilities
alone (`Prepared.scored`) and test is scored here. The record says what was applied and why; the run's
config in its checkpoint (which `medtl predict`, `evaluate`, `serve` and `export` follow) holds `hflip` or
`none`. Every process runs this (sharded loaders, probabilities gathered), so all reach the same decision.
"""

from __future__ import annotations

import dataclasses
import logging

from medtl.evaluation.metrics import score
from medtl.models.strategies import Classifier, Mirrored
from medtl.training.auto import AUC_TIE, beats
from medtl.training.cached import mirrored_from_cache
from medtl.training.loop import predict
from medtl.training.prepare import Prepared

log = logging.getLogger(__name__)


def mirrored(p: Prepared, model: Classifier, probs: dict, progress: bool) -> tuple[Prepared, dict, dict]:
    """(Prepared with train.tta resolved to hflip or none, {split: (probs, labels)}, what was applied and why)."""
    tta = p.cfg.train.tta
    if tta == "none" or not p.cfg.data.hflip:
        why = "train.tta=none" if tta == "none" else "train.tta=auto, but data.hflip=false: no mirrored images"
        return _resolved(p, "none"), _with_test(p, model, probs, progress), {"applied": "none", "reason": why}
    val = _mirrored(p, model, "val", progress)
    record = {"applied": "hflip", "reason": "train.tta=hflip"}
    if tta == "auto":
        plain, mirror = _val_scores(p, probs["val"]), _val_scores(p, val)
        keep = beats(mirror, plain, p.cfg.train.monitor)
        record = {"applied": "hflip" if keep else "none",
                  "reason": f"train.tta=auto: mirrored validation {'better' if keep else 'not better'} by "
                            f"{p.cfg.train.monitor} (AUCs within {AUC_TIE} tie, the lower loss wins); test was "
                            "not looked at", "plain_val": plain, "mirrored_val": mirror}
        log.info("tta: mirrored val AUC %.4f loss %.4f, plain %.4f %.4f: %s", mirror["auc"], mirror["loss"],
                 plain["auc"], plain["loss"], "kept" if keep else "not kept")
        if not keep:
            return _resolved(p, "none"), _with_test(p, model, probs, progress), record
    out = {**probs, "val": val}
    if "test" in p.splits.refs:
        out["test"] = _mirrored(p, model, "test", progress)
    return _resolved(p, "hflip"), out, record


def _mirrored(p: Prepared, model: Classifier, split: str, progress: bool):
    """Mirrored scores of `split`: from the frozen part's cache where the strategy has one (linear, partial),
    else the whole network on each image and its mirror."""
    cached = mirrored_from_cache(p, model, split, progress)
    return cached if cached is not None else _predict(p, Mirrored(model), split, progress)


def _predict(p: Prepared, net, split: str, progress: bool):
    mirror = " (mirrored too)" if isinstance(net, Mirrored) else ""
    return predict(net, p.loader(split, False, p.cfg.train.batch_size), p.prepare, p.device,
                   f"predict {split}{mirror}", progress)


def _with_test(p: Prepared, model: Classifier, probs: dict, progress: bool) -> dict:
    """`probs` with test's, computed now when training left it out (tta pending)."""
    if "test" in probs or "test" not in p.splits.refs:
        return probs
    return {**probs, "test": _predict(p, model, "test", progress)}


def _val_scores(p: Prepared, pair) -> dict:
    m = score(pair[1], pair[0], p.splits.classes)
    return {"auc": float(m["auc"]), "loss": float(m["loss"])}


def _resolved(p: Prepared, tta: str) -> Prepared:
    return dataclasses.replace(p, cfg=dataclasses.replace(p.cfg, train=dataclasses.replace(p.cfg.train, tta=tta)))
