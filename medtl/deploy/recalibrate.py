"""Local recalibration: a site refits the operating threshold (and, if asked, a temperature) of a trained
run on a few labelled local images.

`medtl calibrate RUN LOCAL_DATA` fits on all of LOCAL_DATA and writes a new run folder (the same weights, the
new threshold and temperature, and a record of where it came from); `medtl evaluate --calibrate-fraction 0.2`
splits the evaluated data (stratified, seeded, patients and copies of one image kept together) into a
calibration part and a held-out part, fits on the first and scores the second before and after."""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from medtl.core.config import dump_yaml
from medtl.core.errors import MedtlError
from medtl.core.io import atomic_write, make_dir, write_json
from medtl.core.runfolder import RunFolder
from medtl.data.groups import content_groups
from medtl.data.splits import DataSplits, carve
from medtl.deploy.scoring import Scored, score_data
from medtl.evaluation import operating
from medtl.evaluation.report import write_predictions
from medtl.evaluation.splits_report import split_report
from medtl.evaluation.uncertainty import apply_temperature, fit_temperature
from medtl.models.checkpoint import Checkpoint

log = logging.getLogger(__name__)
NOT_COPIED = {"checkpoint.pt", "metrics.json", "run.lock", "state.pt", "train.log", "model.onnx",
              "model.torchscript.pt", "cam_grid.png", "confusion.png", "reliability.png"}  # rewritten, or stale


def fit_local(y: np.ndarray, p: np.ndarray, binary: bool, spec: str, temperature: bool) -> tuple[float, float]:
    """(temperature factor, threshold) fitted on labelled local probabilities: the factor multiplies the run's
    temperature; the threshold is chosen by `spec` on the rescaled probabilities (multiclass: argmax, 0.5)."""
    factor = fit_temperature(y, p) if temperature else 1.0
    rescaled = apply_temperature(p, factor) if temperature else p
    return factor, (operating.choose(y, rescaled, spec) if binary else 0.5)


def _need_something_to_fit(scored: Scored, temperature: bool) -> None:
    if not scored.binary and not temperature:
        raise MedtlError(f"the run has {len(scored.classes)} classes and predicts the most probable one: there is no "
                         "threshold to refit; pass --temperature to refit its temperature")


def calibration_split(scored: Scored, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    """Indices (calibration, held-out) and how images were kept together: by patient when the data name
    patients, else by copies (exact and near, as `medtl audit` finds them)."""
    if not 0 < fraction < 1:
        raise MedtlError(f"--calibrate-fraction {fraction}: give a fraction between 0 and 1, e.g. 0.2")
    splits = DataSplits(scored.classes, refs={"heldout": list(scored.refs)}, labels={"heldout": scored.labels})
    if scored.groups and len(scored.groups) == len(scored.refs):
        groups, kind = scored.groups, "patient"
    else:
        groups, kind = content_groups(scored.refs, near=True), "near_duplicates"
    carve(splits, "heldout", "calibration", fraction, seed, groups, kind)
    row = {r: i for i, r in enumerate(scored.refs)}
    return (np.array([row[r] for r in splits.refs["calibration"]]), np.array([row[r] for r in splits.refs["heldout"]]),
            splits.notes[-1])


def recalibrate_part(scored: Scored, cut: float, spec: str, fraction: float, temperature: bool, seed: int,
                     resamples: int, boot_seed: int, parts: tuple | None = None) -> tuple[dict, list[str]]:
    """Fit on a calibration part, score the held-out part before (the run's threshold `cut` and temperature)
    and after; returns the record and each image's part. Only the calibration part's labels are read to fit.
    `parts`: (calibration, held-out, how) indices instead of `calibration_split`'s."""
    _need_something_to_fit(scored, temperature)
    cal, held, how = parts or calibration_split(scored, fraction, seed)
    y, p = scored.labels, scored.probs
    factor, new_cut = fit_local(y[cal], p[cal], scored.binary, spec, temperature)
    after = apply_temperature(p[held], factor) if temperature else p[held]
    parts = ["heldout"] * len(y)
    for i in cal:
        parts[i] = "calibration"
    record = {"fraction": fraction, "seed": seed, "split": {**_note(scored, cal, held), "how": how}, "spec": spec,
              "temperature_fitted": temperature, "temperature_factor": factor,
              "threshold_before": cut if scored.binary else None, "threshold_after": new_cut if scored.binary else None,
              "before": split_report(y[held], p[held], scored.classes, cut, resamples, boot_seed),
              "after": split_report(y[held], after, scored.classes, new_cut, resamples, boot_seed)}
    return record, parts


def _note(scored: Scored, cal: np.ndarray, held: np.ndarray) -> dict:
    counts = {part: {c: int((scored.labels[idx] == k).sum()) for k, c in enumerate(scored.classes)}
              for part, idx in (("calibration", cal), ("heldout", held))}
    return {"calibration_n": int(len(cal)), "heldout_n": int(len(held)), "per_class": counts}


def calibrate(run_dir: str | Path, data: str | Path, output_dir: str | Path | None = None, name: str | None = None,
              split: str = "test", classes: str | dict | None = None, threshold: str | None = None,
              temperature: bool = False, progress: bool = True, device: str | None = None) -> Path:
    """Refit the run's threshold (and with `temperature` its temperature) on every image of `split` of the
    labelled local `data`; write a new run folder with the same weights; returns its path."""
    source = RunFolder(run_dir)
    scored = score_data(source.path, data, split, classes, progress, device)
    _need_something_to_fit(scored, temperature)
    ckpt = Checkpoint.load(source.checkpoint)
    spec = threshold or ckpt.config.eval.threshold
    target = RunFolder(Path(output_dir or source.path.parent) / (name or f"{source.path.name}-calibrated"))
    if target.path.exists():
        raise MedtlError(f"{target.path} already exists; pass another --name or --output-dir")
    factor, cut = fit_local(scored.labels, scored.probs, scored.binary, spec, temperature)
    temp = RunFolder(target.path.parent / f".{target.path.name}.tmp-{os.getpid()}")
    make_dir(temp.path)
    try:
        _write_run(source, temp, ckpt, scored, spec, factor, cut, str(data), split)
        temp.path.rename(target.path)
    finally:
        shutil.rmtree(temp.path, ignore_errors=True)
    log.info("calibrated on %d local images: threshold %.4f -> %.4f, temperature %.3f -> %.3f; new run %s",
             len(scored.refs), ckpt.threshold, cut, ckpt.temperature, ckpt.temperature * factor, target.path)
    return target.path


def _write_run(source: RunFolder, out: RunFolder, ckpt: Checkpoint, scored: Scored, spec: str, factor: float,
               cut: float, data: str, split: str) -> None:
    """The new run folder: the source's files that stay true, the checkpoint with the new threshold and
    temperature, the local data's predictions as its validation, and metrics.json with the origin."""
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
    metrics = {**source.read_metrics(), "threshold": new.threshold, "threshold_method": spec,
               "temperature": new.temperature, "splits": {"val": report}, "weights_sha256": digest}
    metrics.pop("uncalibrated", None)
    metrics["calibrated_from"] = {
        "run": str(source.path.resolve()), "data": os.path.abspath(data), "split": split, "n": len(scored.refs), "class_map": scored.class_map,
        "per_class": {c: int((scored.labels == k).sum()) for k, c in enumerate(scored.classes)},
        "threshold_before": ckpt.threshold, "temperature_before": ckpt.temperature, "spec": spec,
        "temperature_fitted": factor != 1.0, "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "note": "val = the local calibration data; the weights are the source run's"}
    write_json(out.metrics, metrics)
