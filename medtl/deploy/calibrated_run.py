"""`medtl calibrate RUN LOCAL_DATA`: a run's threshold (and, if asked, its temperature) refitted on every image
of labelled local data (deploy/recalibrate.py fits), written as a new run folder: the same weights, the new
threshold and temperature, the local data's predictions as its validation, and a record of where it came from."""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from medtl.core.config import dump_yaml
from medtl.core.errors import MedtlError
from medtl.core.io import atomic_path, atomic_write, make_dir, write_json
from medtl.core.runfolder import RunFolder
from medtl.deploy.options import CalibrateOptions
from medtl.deploy.recalibrate import fit_local, need_something_to_fit
from medtl.deploy.scoring import Scored, score_data
from medtl.evaluation.report import write_predictions
from medtl.evaluation.splits_report import split_report
from medtl.evaluation.uncertainty import apply_temperature
from medtl.models.checkpoint import Checkpoint
from medtl.evaluation.records import RunMetrics

log = logging.getLogger(__name__)
NOT_COPIED = {"checkpoint.pt", "metrics.json", "run.lock", "state.pt", "train.log", "model.onnx",
              "model.torchscript.pt", "cam_grid.png", "confusion.png", "reliability.png"}  # rewritten, or stale


@dataclass(frozen=True)
class LocalFit:
    """What was fitted on the local data: the spec the threshold was chosen by, the temperature factor (it
    multiplies the run's), the threshold; and on what: the data and its split."""

    spec: str
    factor: float
    threshold: float
    data: str
    split: str


def calibrate(run_dir: str | Path, data: str | Path, split: str = "test",
              options: CalibrateOptions = CalibrateOptions(), progress: bool = True,
              device: str | None = None) -> Path:
    """Refit the run's threshold (and with `options.temperature` its temperature) on every image of `split` of
    the labelled local `data`; write a new run folder with the same weights; returns its path."""
    source = RunFolder(run_dir)
    scored = score_data(source.path, data, split, options.classes, progress, device)
    need_something_to_fit(scored, options.temperature)
    ckpt = Checkpoint.load(source.checkpoint)
    spec = options.threshold or ckpt.config.eval.threshold
    name = options.name or f"{source.path.name}-calibrated"
    target = RunFolder(Path(options.output_dir or source.path.parent) / name)
    if target.path.exists():
        raise MedtlError(f"{target.path} already exists; pass another --name or --output-dir")
    factor, cut = fit_local(scored.labels, scored.probs, scored.binary, spec, options.temperature)
    with atomic_path(target.path) as temp:  # the new run folder appears whole, or not at all
        _write_run(source, RunFolder(make_dir(temp)), ckpt, scored, LocalFit(spec, factor, cut, str(data), split))
    log.info("calibrated on %d local images: threshold %.4f -> %.4f, temperature %.3f -> %.3f; new run %s",
             len(scored.refs), ckpt.threshold, cut, ckpt.temperature, ckpt.temperature * factor, target.path)
    return target.path


def _write_run(source: RunFolder, out: RunFolder, ckpt: Checkpoint, scored: Scored, fit: LocalFit) -> None:
    """The new run folder: the source's files that stay true, the checkpoint with the new threshold and
    temperature, the local data's predictions as its validation, and metrics.json with the origin."""
    spec, factor, cut = fit.spec, fit.factor, fit.threshold
    for item in source.path.iterdir():
        if item.is_file() and item.name not in NOT_COPIED and not item.name.startswith("predictions_"):
            shutil.copy2(item, out.path / item.name)
    eval_ = dataclasses.replace(ckpt.config.eval, threshold=spec,
                                calibrate="temperature" if factor != 1.0 else ckpt.config.eval.calibrate)
    cfg = dataclasses.replace(ckpt.config, eval=eval_)
    new = dataclasses.replace(ckpt, config=cfg, threshold=cut if scored.binary else ckpt.threshold,
                              temperature=ckpt.temperature * factor)
    atomic_write(out.config, dump_yaml(cfg))
    digest = new.save(out.checkpoint)
    probs = apply_temperature(scored.probs, factor) if factor != 1.0 else scored.probs
    write_predictions(out.predictions("val"), scored.refs, scored.labels, probs, scored.classes, new.threshold)
    report = split_report(scored.labels, probs, scored.classes, new.threshold, cfg.eval.bootstrap, cfg.train.seed)
    metrics = {**RunMetrics.of_run(source).to_dict(), "threshold": new.threshold, "threshold_method": spec,
               "temperature": new.temperature, "splits": {"val": report}, "weights_sha256": digest}
    metrics.pop("uncalibrated", None)
    metrics["calibrated_from"] = {
        "run": str(source.path.resolve()), "data": os.path.abspath(fit.data), "split": fit.split,
        "n": len(scored.refs), "class_map": scored.class_map,
        "per_class": {c: int((scored.labels == k).sum()) for k, c in enumerate(scored.classes)},
        "threshold_before": ckpt.threshold, "temperature_before": ckpt.temperature, "spec": spec,
        "temperature_fitted": factor != 1.0, "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "note": "val = the local calibration data; the weights are the source run's"}
    write_json(out.metrics, metrics)
