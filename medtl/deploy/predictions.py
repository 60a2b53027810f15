"""Files scored with a `Predictor` in batches (the next batch decoded while this one runs), as rows: the
predicted class, the probabilities, and the shift and referral fields ("unlike the training images", the
conformal prediction set, refer); their CSV, and a one-line summary of a batch."""

from __future__ import annotations

from pathlib import Path

import torch

from medtl.core.io import make_dir, write_csv
from medtl.core.logs import progress as progress_of
from medtl.data.images import READ_ERRORS
from medtl.deploy.predictor import Predictor
from medtl.evaluation.shift import FLAG_QUANTILE, NOT_AVAILABLE


def predict_files(pred: Predictor, paths: list[Path], batch_size: int = 32, progress: bool = True):
    """Rows (path, class, probabilities) for readable files, and {path: reason} for the others. The next
    batch is decoded in a background thread while this one runs through the network."""
    rows, failed = [], {}
    pred.planned = len(paths)
    batches = (_decoded(pred, paths, batch_size, failed))
    for chunk, tensors in progress_of(batches, "predict", progress, total=-(-len(paths) // batch_size), unit="batch"):
        probs, feats = pred.outputs(torch.stack(tensors))
        decided = pred.decide(probs)
        for path, k, p, extra in zip(chunk, decided, probs, pred.assess(probs, feats, decided)):
            rows.append({"path": str(path), "predicted": pred.classes[k], "probabilities": p, **extra})
    return rows, failed


def _decoded(pred: Predictor, paths: list[Path], batch_size: int, failed: dict[str, str]):
    """(paths, uint8 tensors) of each batch's readable files; the reasons for the others go into `failed`."""
    for start in range(0, len(paths), batch_size):
        chunk, tensors = [], []
        for path in paths[start:start + batch_size]:
            try:
                tensors.append(pred.load(path))
                chunk.append(path)
            except READ_ERRORS as exc:
                failed[str(path)] = f"{exc.__class__.__name__}: {exc}"
        if tensors:
            yield chunk, tensors


def write_predictions(path: Path, pred: Predictor, rows: list[dict], failed: dict[str, str]) -> None:
    """CSV: path, predicted, one probability column per class, threshold, the "unlike the training images"
    percentile and flag, the prediction set (classes joined by `|`) and refer at `coverage`, error (unreadable
    files too). The shift and referral cells are empty for a run made before medtl kept its feature reference."""
    make_dir(path.parent)
    threshold = f"{pred.threshold:.6f}" if pred.binary else "argmax"
    coverage = f"{pred.coverage:g}" if pred.reference is not None else ""
    cells = [[r["path"], r["predicted"], *[f"{p:.6f}" for p in r["probabilities"]], threshold, *_extra_cells(r),
              coverage, ""] for r in rows]
    cells += [[p, "", *[""] * len(pred.classes), threshold, *[""] * len(EXTRA), coverage, reason]
              for p, reason in failed.items()]
    write_csv(path, ["path", "predicted", *[f"prob_{c}" for c in pred.classes], "threshold", *EXTRA, "coverage",
                     "error"], cells)


EXTRA = ("unlike_percentile", "unlike_training", "prediction_set", "refer")  # CSV columns after threshold


def _extra_cells(row: dict) -> list[str]:
    if row.get("refer") is None:
        return [""] * len(EXTRA)
    return [f"{row['unlike_percentile']:.1f}", "yes" if row["unlike_training"] else "no",
            "|".join(row["prediction_set"]), "yes" if row["refer"] else "no"]


def trust_summary(rows: list[dict], coverage: float) -> str:
    """One line on a batch of prediction rows: how many to refer, how many unlike the training images."""
    if not rows or rows[0].get("refer") is None:  # a run without its reference: rows without these fields
        return "referral and shift scores: " + NOT_AVAILABLE if rows else "no image scored"
    refer = sum(r["refer"] for r in rows)
    unlike = sum(r["unlike_training"] for r in rows)
    return (f"{refer} of {len(rows)} to refer (prediction set at {coverage:g} coverage not the predicted class "
            f"alone); {unlike} unlike the training images (above the {FLAG_QUANTILE:.0%} cut-off)")
