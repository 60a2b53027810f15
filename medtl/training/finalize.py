"""The finalize phase, the one owner of what gets scored: after every choice (auto's strategy, the mirror,
calibration) test is scored once (training/scoring.py); then the run's metrics, predictions, checkpoint and
figures are written, metrics.json last (its presence marks a finished run)."""

from __future__ import annotations

import logging
import time

from medtl.core.environment import environment
from medtl.core.runfolder import RunFolder
from medtl.data.image_keys import write_image_keys
from medtl.evaluation.records import RunMetrics
from medtl.evaluation.report import format_metrics, write_history, write_key_predictions, write_predictions
from medtl.models.checkpoint import Checkpoint
from medtl.training.prepared import Scored, Trained
from medtl.training.reference import save_reference
from medtl.training.run_reports import patient_results, plot_run, split_reports
from medtl.training.scoring import score

log = logging.getLogger(__name__)


def finalize(trained: Trained, folder: RunFolder | None, progress: bool, began: float) -> RunMetrics | None:
    """Score the chosen model (every process takes its share) and, with `folder` (rank 0), write the run's
    results there; returns its metrics (None without a folder). `began`: `time.perf_counter()` when training
    began (train_seconds counts to the end of scoring)."""
    if folder is not None and trained.auto is not None:
        trained.auto.write(folder.auto)
    scored = score(trained, progress)
    if folder is None:
        return None
    return _write(scored, folder, time.perf_counter() - began)


def _write(scored: Scored, folder: RunFolder, seconds: float) -> RunMetrics:
    """Predictions, checkpoint, history, figures, then metrics.json."""
    p, model, result = scored.trained.p, scored.trained.model, scored.trained.result
    classes, threshold = p.splits.classes, scored.threshold
    keys = write_image_keys(folder, p.splits, p.facts)  # what `medtl evaluate` finds copies of, elsewhere
    splits = split_reports(p, scored, threshold, keys)
    for split, m in splits.items():
        log.info(format_metrics(split, m))
    for split, (pr, y) in scored.scores.items():
        write_predictions(folder.predictions(split), p.splits.refs[split], y, pr, classes, threshold)
    by_patient, key_scores = patient_results(p, scored)
    for split, k in key_scores.items():
        log.info(format_metrics(f"{split} per patient ({by_patient['rule']})", by_patient["splits"][split]))
        write_key_predictions(folder.patient_predictions(split), k, classes, by_patient["threshold"])
    save_reference(p, model, folder.path, val_probs=scored.scores["val"].probs)  # shift and referral, later
    ckpt = Checkpoint(model.state_dict(), p.cfg, classes, threshold, p.preprocess, backbone=p.spec.name,
                      temperature=scored.temperature)
    digest = ckpt.save(folder.checkpoint)
    write_history(folder.history, result.history)
    plot_run(folder, result.history, splits, f"{p.spec.name} {p.cfg.model.strategy}", classes)
    metrics = RunMetrics(result.best_epoch, len(result.history), seconds, threshold, p.cfg.eval.threshold,
                         classes=classes, image_size=p.size, split_sizes={s: len(r) for s, r in p.splits.refs.items()},
                         splits=splits,
                         temperature=scored.temperature, weights_sha256=digest,
                         uncalibrated=scored.uncalibrated,
                         auto=scored.trained.auto.to_dict() if scored.trained.auto else {}, tta=scored.tta,
                         environment=environment("when the run was trained"), patients=p.splits.patients(),
                         patient_level=by_patient)
    metrics.write(folder.metrics)  # last: its presence marks a finished run (studies resume on it)
    log.info("training took %.1f s; best epoch %d; threshold %.4f (chosen on validation by %s)",
             seconds, result.best_epoch, threshold, p.cfg.eval.threshold)
    return metrics
