"""Re-scoring a saved run on labelled data from anywhere (`medtl evaluate`), apart from training.

What a training run reports for its test split, for any data: every metric with its 95 % interval (per class
too), calibration, the operating point and the rates it reaches on validation and here, exact and near copies
of the run's training and validation images counted and the metrics without them, and (when asked) local
recalibration on a calibration part with the held-out part's metrics before and after. Nothing here looks at
the evaluated labels to choose anything, except the calibration part's labels when the user asks for it.
"""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path

import numpy as np

from medtl.core.errors import MedtlError
from medtl.core.runfolder import RunFolder
from medtl.data.image_keys import read_image_keys, without_copies
from medtl.deploy.evaluation_folder import Evaluation, as_plain, write_folder
from medtl.deploy.evaluation_patients import patient_level
from medtl.deploy.evaluation_trust import shift_and_referral
from medtl.deploy.options import EvaluateOptions
from medtl.deploy.recalibrate import recalibrate_part
from medtl.deploy.scoring import Scored, score_data
from medtl.evaluation import operating
from medtl.evaluation.splits_report import split_report
from medtl.models.checkpoint import Checkpoint

log = logging.getLogger(__name__)
NO_KEYS = "copies not checked (run made before runs kept image_keys.json: the digests of their train/val images)"


def evaluate(run_dir: str | Path, data: str | Path, split: str = "test", options: EvaluateOptions = EvaluateOptions(),
             progress: bool = True, device: str | None = None) -> Evaluation:
    """Score `split` of `data` with the run in `run_dir`; write the evaluation folder when `options.output_dir`
    is given.

    `options.classes` maps the data's class names onto the run's ("0=NORMAL,1=PNEUMONIA"); `threshold` is an
    operating-point spec chosen on the run's validation predictions (default: the run's own threshold);
    `calibrate_fraction` splits the data (stratified, seeded, patients and copies kept together) into a
    calibration part, on which the threshold (and with `temperature` a temperature) is refitted, and a held-out
    part, scored before and after."""
    threshold = options.threshold
    folder = RunFolder(run_dir)
    scored = score_data(folder.path, data, split, options.classes, progress, device, options.reveal_ids)
    ckpt = Checkpoint.load(folder.checkpoint)
    resamples, boot_seed = ckpt.config.eval.bootstrap, ckpt.config.train.seed
    if threshold is not None and not scored.binary:
        raise MedtlError(f"--threshold {threshold}: the run has {len(scored.classes)} classes and predicts the most "
                         "probable one; an operating point applies to two-class runs only")
    cut, point = _operating_point(folder, ckpt, scored, threshold, resamples, boot_seed)
    report = split_report(scored.labels, scored.probs, scored.classes, cut, resamples, boot_seed,
                          clusters=scored.clusters())
    copy_rows, copies, without = _copies(folder, scored, cut, resamples, boot_seed)
    recal, parts = None, None
    if options.calibrate_fraction:
        recal, parts = recalibrate_part(scored, cut, ckpt.config.eval.threshold if threshold is None else threshold,
                                        options, resamples, boot_seed)
    elif options.temperature:
        raise MedtlError("--temperature refits a temperature on a calibration part: give --calibrate-fraction too "
                         "(e.g. 0.2), or use `medtl calibrate RUN LOCAL_DATA --temperature`")
    ev = Evaluation(str(folder.path.resolve()), os.path.abspath(str(data)), split, scored.classes, scored.class_map,
                    threshold=cut if scored.binary else None, temperature=ckpt.temperature, metrics=as_plain(report),
                    operating_point=as_plain(point), copies=copies, without_copies=as_plain(without),
                    recalibration=as_plain(recal), skipped=scored.skipped,
                    patients=scored.patients, scored=scored)
    ev.patient_level, ev.by_patient = patient_level(folder, scored, cut, resamples, boot_seed)
    shift_and_referral(ev, folder, (cut, options.coverage), boot_seed)
    if options.output_dir is not None:
        title = f"{folder.path.name} on {Path(str(data)).name} ({split})"
        write_folder(ev, options.output_dir, title, copy_rows, parts)
    return ev


def validation_predictions(folder: RunFolder, classes: list[str]) -> tuple[np.ndarray, np.ndarray] | None:
    """(labels, P(positive)) of the run's validation split, from its predictions_val.csv (the probabilities
    the run's threshold was chosen on), or None when the run did not keep them."""
    path = folder.predictions("val")
    if not path.is_file():
        return None
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    column = f"prob_{classes[1]}"
    if not rows or column not in rows[0]:
        return None
    return (np.array([classes.index(r["label"]) for r in rows]), np.array([float(r[column]) for r in rows]))


def _operating_point(folder: RunFolder, ckpt: Checkpoint, scored: Scored, spec: str | None, resamples: int,
                     seed: int) -> tuple[float, dict | None]:
    """The threshold (the run's, or `spec` chosen on the run's validation predictions) and its record."""
    if not scored.binary:
        return 0.5, None
    val = validation_predictions(folder, scored.classes)
    if spec is None:  # the run's own threshold, chosen when it trained
        cut, spec, where = ckpt.threshold, ckpt.config.eval.threshold, "validation, when the run trained"
    else:
        kind, value = operating.parse(spec)
        if kind == "fixed":
            cut, where = float(value), "given"
        elif val is None:
            raise MedtlError(f"--threshold {spec} is chosen on the run's validation predictions, but "
                             f"{folder.predictions('val')} is missing; pass a fixed --threshold (e.g. 0.5)")
        else:
            cut, where = operating.choose(*val, spec), f"validation ({folder.predictions('val').name})"
    return cut, operating.operating_point(spec, cut, where, val, (scored.labels, scored.probs), resamples, seed)


def _copies(folder: RunFolder, scored: Scored, cut: float, resamples: int, seed: int):
    """Per-image copy rows, the copies record, and the metrics without the images that copy a train or val image
    (None when there are none, or none would be left)."""
    keys = read_image_keys(folder)
    blank = [{"kind": "", "split": "", "bits": None}] * len(scored.refs)
    if keys is None:
        return blank, {"checked": False, "note": NO_KEYS}, None
    keep, rows, counts = without_copies(scored.refs, keys)
    record = {"checked": True, "against": keys.splits, **counts}
    without = None
    if 0 < len(keep) < len(rows):
        clusters = scored.clusters()
        kept = None if clusters is None else [clusters[i] for i in keep]
        without = {**split_report(scored.labels[keep], scored.probs[keep], scored.classes, cut, resamples, seed,
                                  clusters=kept), "removed": int(len(rows) - len(keep))}
    if record["copies"]:
        log.warning("%d evaluated image(s) are copies of the run's training or validation images (%s); the metrics "
                    "without them are reported too", record["copies"],
                    ", ".join(f"{k} {v}" for k, v in counts.items() if v and k != "copies"))
    return rows, record, without
