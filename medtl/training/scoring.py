"""After every choice (strategy, mirror), test is scored once; then one temperature (eval.calibrate) and the
threshold, both fitted on validation. Every process runs this (sharded loaders, probabilities gathered)."""

from __future__ import annotations

import logging

from medtl.evaluation import operating
from medtl.evaluation.uncertainty import apply_temperature, calibration, fit_temperature
from medtl.training.mirror import mirrored, score_split
from medtl.training.prepared import Prepared, Scored, Trained
from medtl.training.results import SplitScores

log = logging.getLogger(__name__)


def score(trained: Trained, progress: bool) -> Scored:
    """The mirror chosen on validation, test scored once that way, then calibration and the threshold."""
    p, val, tta = mirrored(trained.p, trained.model, trained.result.scores["val"], progress)
    scores = {"val": val}
    if "test" in p.splits.refs:
        scores["test"] = score_split(p, trained.model, "test", progress)
    scores, temperature, before = _calibrate(p, scores)
    val_p, val_y = scores["val"]
    threshold = operating.choose(val_y, val_p, p.cfg.eval.threshold, "eval.threshold") if p.binary else 0.5
    chosen = Trained(p, trained.model, trained.result, trained.auto)
    return Scored(chosen, scores, temperature, before, threshold, tta=tta)


def _calibrate(p: Prepared, scores: dict[str, SplitScores]) -> tuple[dict[str, SplitScores], float, dict]:
    """eval.calibrate=temperature: one temperature fitted on validation rescales every split's probabilities;
    returns (scores, temperature, {split: calibration before})."""
    if p.cfg.eval.calibrate == "none":
        return scores, 1.0, {}
    val_p, val_y = scores["val"]
    t = fit_temperature(val_y, val_p)
    before = {s: calibration(y, pr) for s, (pr, y) in scores.items()}
    log.info("temperature %.3f fitted on validation (ECE before: %s)", t,
             ", ".join(f"{s} {c['ece']:.4f}" for s, c in before.items()))
    return {s: SplitScores(apply_temperature(pr, t), y) for s, (pr, y) in scores.items()}, t, before
