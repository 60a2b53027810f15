"""A trained run as a predictor: the run's own preprocessing, classes and threshold, for new images.

`medtl predict`, `explain`, `export` and `serve` all go through `Predictor`, so a served or exported
model sees exactly the pixels that evaluation saw (8-bit, squashed to the run's size, same channels).
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torch import nn

from medtl.core.device import pick_device
from medtl.core.io import atomic_write, cache_root, make_dir
from medtl.core.logs import progress as progress_of
from medtl.core.runfolder import RunFolder
from medtl.data.dicom import is_dicom, read_dicom
from medtl.data.images import DEFAULT_MAX_PIXELS, READ_ERRORS, OverPixelLimit, open_checked, reduce_on_decode
from medtl.data.preprocess import Preprocess
from medtl.evaluation.conformal import DEFAULT_COVERAGE, referral
from medtl.evaluation.metrics import class_table, decide
from medtl.evaluation.shift import FLAG_QUANTILE, NOT_AVAILABLE, FeatureReference, load_reference, unlike_scores
from medtl.models.checkpoint import Checkpoint
from medtl.models.engine import OnPixels, frozen_runner
from medtl.models.reference import WithFeatures, outputs_of, split
from medtl.models.strategies import Classifier, for_prediction, to_probs

log = logging.getLogger(__name__)

@dataclass
class Predictor:
    """A trained model with its classes, threshold and preprocessing (from its checkpoint), on a device."""

    model: Classifier
    classes: list[str]
    threshold: float
    preprocess: Preprocess
    backbone: str
    device: torch.device
    temperature: float = 1.0  # fitted on validation when the run was calibrated
    engine: str = "torch"  # auto | torch | openvino | onnxruntime (models/engine.py), chosen at the first batch
    planned: int = 0  # images the caller will score (auto exports only for a long enough pass)
    tta: bool = False  # the run's eval.tta=hflip: logits of each image and of its mirror averaged
    runner: Callable[[torch.Tensor], torch.Tensor] | None = field(default=None, repr=False, compare=False)
    reference: FeatureReference | None = field(default=None, repr=False)  # None: a run made before it was kept
    coverage: float = DEFAULT_COVERAGE  # of the conformal prediction sets that decide "refer"

    @classmethod
    def from_run(cls, run_dir: str | Path, device: str = "auto", engine: str = "auto") -> "Predictor":
        ckpt = Checkpoint.load(RunFolder(run_dir).checkpoint)
        dev = pick_device(device)
        reference = load_reference(run_dir)
        if reference is None:
            log.info("%s: shift scores and referral %s", run_dir, NOT_AVAILABLE)
        return cls(ckpt.build().to(dev), ckpt.classes, ckpt.threshold, ckpt.preprocess, ckpt.backbone, dev,
                   ckpt.temperature, engine, tta=ckpt.config.eval.tta == "hflip", reference=reference)

    @property
    def net(self) -> nn.Module:
        """What predicts: the model, or its mirrored average (test-time augmentation)."""
        return for_prediction(self.model, "hflip" if self.tta else "none")

    size = property(lambda self: self.preprocess.size)
    in_chans = property(lambda self: self.preprocess.in_chans)
    mean = property(lambda self: self.preprocess.mean)
    std = property(lambda self: self.preprocess.std)
    decoding = property(lambda self: self.preprocess.decoding)

    @property
    def binary(self) -> bool:
        return len(self.classes) == 2

    def pixels(self, img: Image.Image) -> torch.Tensor:
        """uint8 (C, S, S) with the channels the model takes."""
        return self.preprocess.pixels(img)

    def load(self, path: str | Path) -> torch.Tensor:
        """`pixels` of a file (image or DICOM, with the run's DICOM window)."""
        return self.preprocess.load(path)

    def normalized(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 (N, C, S, S) -> the float input of the network, on its device."""
        return self.preprocess.normalize(batch.to(self.device))

    def probabilities(self, batch: torch.Tensor) -> np.ndarray:
        """(N, K) class probabilities of a uint8 batch; binary runs give [1 - p, p]."""
        return self.outputs(batch)[0]

    @torch.inference_mode()
    def outputs(self, batch: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
        """(`probabilities`, pooled backbone features (N, D) from the same pass, or None for a run without a
        feature reference)."""
        x = batch.to(self.device)
        if self.runner is None:  # normalised inside: by the engine's graph, or in eager PyTorch
            net = WithFeatures(self.model, self.tta) if self.reference is not None else self.net
            net = OnPixels(net, *self.preprocess.stats()).to(self.device)
            self.runner = frozen_runner(net, x, self.engine, cache_root(), self.planned)
        out = self.runner(x).float()
        logits, feats = split(out, outputs_of(self.model)) if self.reference is not None else (out, None)
        probs = class_table(to_probs(logits / self.temperature).cpu().numpy())
        return probs, None if feats is None else feats.cpu().numpy()

    def assess(self, probs: np.ndarray, feats: np.ndarray | None, predicted: np.ndarray) -> list[dict]:
        """Per image: the "unlike the training images" percentile and flag (evaluation/shift.py), the conformal
        prediction set at `coverage` and whether to refer (evaluation/conformal.py); None each for a run made
        before medtl kept its feature reference."""
        if self.reference is None or feats is None:
            return [{"unlike_percentile": None, "unlike_training": None, "prediction_set": None, "refer": None}
                    for _ in probs]
        percentile, flag = unlike_scores(self.reference, feats)
        sets, referred = referral(probs, self.reference.cal_scores, self.coverage, predicted)
        return [{"unlike_percentile": float(q), "unlike_training": bool(f),
                 "prediction_set": [c for c, inside in zip(self.classes, row) if inside], "refer": bool(r)}
                for q, f, row, r in zip(percentile, flag, sets, referred)]

    def decide(self, probs: np.ndarray) -> np.ndarray:
        """Class index per row: the run's threshold (chosen on validation) for binary runs, argmax otherwise."""
        return decide(probs, self.threshold)


def open_upload(data: bytes, window: str = "auto", max_pixels: int = DEFAULT_MAX_PIXELS,
                reduce_to: int = 0) -> Image.Image:
    """An uploaded file's bytes as an image (DICOM or anything PIL reads; a JPEG decoded down to twice
    `reduce_to` at least, as training decoded it); ValueError when it is neither, or when it is larger than
    `max_pixels` (the message then says so)."""
    if is_dicom(data):
        return read_dicom(data, window, max_pixels)
    try:
        with open_checked(io.BytesIO(data), max_pixels) as img:
            reduce_on_decode(img, reduce_to)
            img.load()
            return img.copy()
    except OverPixelLimit:
        raise  # its own message says what to do
    except READ_ERRORS as exc:
        raise ValueError(f"not an image PIL or pydicom can read ({exc.__class__.__name__})") from exc


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
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path", "predicted", *[f"prob_{c}" for c in pred.classes], "threshold", *EXTRA, "coverage", "error"])
    threshold = f"{pred.threshold:.6f}" if pred.binary else "argmax"
    coverage = f"{pred.coverage:g}" if pred.reference is not None else ""
    for r in rows:
        w.writerow([r["path"], r["predicted"], *[f"{p:.6f}" for p in r["probabilities"]], threshold,
                    *_extra_cells(r), coverage, ""])
    for p, reason in failed.items():
        w.writerow([p, "", *[""] * len(pred.classes), threshold, *[""] * len(EXTRA), coverage, reason])
    atomic_write(path, buf.getvalue())


EXTRA = ("unlike_percentile", "unlike_training", "prediction_set", "refer")  # CSV columns after threshold


def _extra_cells(row: dict) -> list[str]:
    if row.get("refer") is None:
        return [""] * len(EXTRA)
    return [f"{row['unlike_percentile']:.1f}", "yes" if row["unlike_training"] else "no",
            "|".join(row["prediction_set"]), "yes" if row["refer"] else "no"]


def trust_summary(rows: list[dict], coverage: float) -> str:
    """One line on a batch of prediction rows: how many to refer, how many unlike the training images."""
    if not rows or rows[0]["refer"] is None:
        return "referral and shift scores: " + NOT_AVAILABLE if rows else "no image scored"
    refer = sum(r["refer"] for r in rows)
    unlike = sum(r["unlike_training"] for r in rows)
    return (f"{refer} of {len(rows)} to refer (prediction set at {coverage:g} coverage not the predicted class "
            f"alone); {unlike} unlike the training images (above the {FLAG_QUANTILE:.0%} cut-off)")
