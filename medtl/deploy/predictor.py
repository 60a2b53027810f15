"""A trained run as a predictor: the run's own preprocessing, classes and threshold, for new images.

`medtl predict`, `explain`, `export` and `serve` all go through `Predictor`, so a served or exported
model sees exactly the pixels that evaluation saw (8-bit, squashed to the run's size, same channels).
Uploaded bytes are decoded in deploy/uploads.py; files scored in batches, as rows and CSV, in
deploy/predictions.py.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torch import nn

from medtl.core.device import pick_device
from medtl.core.io import cache_root
from medtl.core.runfolder import RunFolder
from medtl.data.preprocess import Preprocess
from medtl.evaluation.conformal import DEFAULT_COVERAGE, referral
from medtl.evaluation.metrics import class_table, decide
from medtl.evaluation.shift import NOT_AVAILABLE, FeatureReference, load_reference, unlike_scores
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
