"""The evaluation folder `medtl evaluate` writes, and the `Evaluation` record it holds (readable back from
Python with `Evaluation.load(folder)`): every file named in one place, as the run folder's are."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from medtl.core.errors import MedtlError
from medtl.core.io import atomic_path, make_dir, write_csv, write_json
from medtl.evaluation.figures import plot_confusions, plot_decision_curve, plot_reliability, plot_roc
from medtl.evaluation.metrics import class_table, decide
from medtl.evaluation.operating import DECISION_THRESHOLDS, net_benefit
from medtl.evaluation.report import write_key_predictions

SCHEMA = "medtl-evaluation/1"
UNSAVED = ("scored", "folder", "by_patient")  # fields of this pass, not of the record


@dataclass(frozen=True)
class EvaluationFolder:
    """`medtl evaluate`'s output folder."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    def __fspath__(self) -> str:
        return str(self.path)

    metrics = property(lambda self: self.path / "metrics.json")  # the whole Evaluation record
    predictions = property(lambda self: self.path / "predictions.csv")  # per image: label, prediction, copy
    patient_predictions = property(lambda self: self.path / "predictions_patients.csv")  # per patient key
    copies = property(lambda self: self.path / "copies.csv")  # evaluated images with a copy in train or val
    skipped = property(lambda self: self.path / "skipped.csv")  # unreadable images: path, reason
    reliability = property(lambda self: self.path / "reliability.png")
    confusion = property(lambda self: self.path / "confusion.png")
    roc = property(lambda self: self.path / "roc.png")  # the operating point marked
    decision_curve = property(lambda self: self.path / "decision_curve.png")  # binary runs: net benefit


@dataclass
class Evaluation:
    """What `medtl evaluate` found: `metrics` (every metric with its 95 % interval, calibration, per class),
    the operating point, copies of the run's training/validation images (and the metrics without them),
    local recalibration when asked. `evaluation["auc"]` reads `metrics`. `shift` and `referral` are filled by
    the data-set shift test and conformal referral when they run; `scored` (not saved) holds the per-image
    probabilities and pooled backbone features of this pass."""

    run: str
    data: str
    split: str
    classes: list[str]
    class_map: dict[str, str]
    threshold: float | None  # None: multiclass (argmax)
    temperature: float
    metrics: dict[str, Any]
    operating_point: dict[str, Any] | None = None
    copies: dict[str, Any] = field(default_factory=dict)
    without_copies: dict[str, Any] | None = None
    recalibration: dict[str, Any] | None = None
    skipped: dict[str, str] = field(default_factory=dict)
    shift: dict | None = None  # data-set shift against the training images (filled by the shift test)
    referral: dict | None = None  # conformal referral: coverage reached, referral rate
    patients: dict = field(default_factory=dict)  # where the patient keys came from, pseudonymised or not
    patient_level: dict | None = None  # per patient key: the run's rule and threshold, metrics over keys
    folder: Path | None = None
    scored: Any = field(default=None, repr=False, compare=False)  # deploy.scoring.Scored of this pass
    by_patient: Any = field(default=None, repr=False, compare=False)  # patient_level.KeyScores of this pass

    def __getitem__(self, key: str) -> Any:
        return self.metrics[key]

    def to_dict(self) -> dict[str, Any]:
        """The record as its metrics.json holds it (with its schema name)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in UNSAVED}
        return {"schema": SCHEMA, **out}

    @classmethod
    def load(cls, folder: str | Path | EvaluationFolder) -> "Evaluation":
        """Read back an evaluation.

        Args:
            folder: An evaluation folder written by `medtl evaluate`.

        Returns:
            Its record (`folder` set to where it was read).

        Raises:
            MedtlError: The folder holds no readable evaluation record.
        """
        where = folder if isinstance(folder, EvaluationFolder) else EvaluationFolder(folder)
        try:
            data = json.loads(where.metrics.read_text())
        except (OSError, ValueError) as exc:
            raise MedtlError(f"{where.metrics} is not readable ({type(exc).__name__}); pass a folder written by "
                             "`medtl evaluate`") from None
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            raise MedtlError(f"{where.metrics} is not an evaluation record ({SCHEMA}); pass a folder written by "
                             "`medtl evaluate`")
        known = {f.name for f in fields(cls)} - set(UNSAVED)
        return cls(**{k: v for k, v in data.items() if k in known}, folder=where.path)


def write_folder(ev: Evaluation, out: str | Path, title: str, copy_rows: list[dict], parts: list[str] | None) -> Path:
    """Write every file of the evaluation into a fresh sibling folder, then put it in place of `out` (an older
    evaluation there is replaced; anything else there is refused)."""
    target = EvaluationFolder(out)
    if target.path.exists() and any(target.path.iterdir()) and not target.metrics.is_file():
        raise MedtlError(f"--output-dir {target.path} holds other files; pass a new folder (or an earlier "
                         "`medtl evaluate` folder to replace it)")
    make_dir(target.path.parent)
    with atomic_path(target.path) as temp:  # an earlier evaluation there is replaced only by a whole one
        _write_files(ev, EvaluationFolder(make_dir(temp)), title, copy_rows, parts)
    ev.folder = target.path
    return target.path


def _write_files(ev: Evaluation, f: EvaluationFolder, title: str, copy_rows: list[dict],
                 parts: list[str] | None) -> None:
    s = ev.scored
    shown = {ev.split: ev.metrics, **({f"{ev.split} without copies": ev.without_copies} if ev.without_copies else {})}
    _write_predictions(f.predictions, ev, copy_rows, parts)
    if ev.by_patient is not None:
        write_key_predictions(f.patient_predictions, ev.by_patient, ev.classes, ev.patient_level["threshold"])
    if any(r["kind"] for r in copy_rows):
        write_csv(f.copies, ["path", "copy", "of_split", "hash_bits"],
                   [[ref, r["kind"], r["split"], r["bits"]] for ref, r in zip(s.refs, copy_rows) if r["kind"]])
    if ev.skipped:
        write_csv(f.skipped, ["path", "reason"], list(ev.skipped.items()))
    plot_reliability(f.reliability, shown, title)
    plot_confusions(f.confusion, shown, ev.classes)
    plot_roc(f.roc, s.labels, s.probs, ev.classes, ev.threshold, title)
    if s.binary:
        curves = net_benefit(s.labels, s.probs, DECISION_THRESHOLDS)
        plot_decision_curve(f.decision_curve, curves, ev.threshold, title)
    write_json(f.metrics, ev.to_dict())  # last: its presence marks a complete folder


def _write_predictions(path: Path, ev: Evaluation, copy_rows: list[dict], parts: list[str] | None) -> None:
    s = ev.scored
    table = class_table(s.probs)
    predicted = decide(table, ev.threshold if ev.threshold is not None else 0.5)
    rows = []
    for i, (ref, y, k) in enumerate(zip(s.refs, s.labels, predicted)):
        rows.append([ref, ev.classes[int(y)], ev.classes[int(k)], *[f"{v:.6f}" for v in table[i]],
                     copy_rows[i]["kind"], copy_rows[i]["split"], *([parts[i]] if parts else [])])
    head = ["path", "label", "predicted", *[f"prob_{c}" for c in ev.classes], "copy", "copy_of"]
    write_csv(path, head + (["part"] if parts else []), rows)


def as_plain(value: Any) -> Any:
    """numpy scalars and arrays as JSON-able Python values."""
    if isinstance(value, dict):
        return {k: as_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [as_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


__all__ = ["Evaluation", "EvaluationFolder", "write_folder", "as_plain"]
