"""A trained run as a predictor: the run's own preprocessing, classes and threshold, for new images.

`medtl predict`, `explain`, `export` and `serve` all go through `Predictor`, so a served or exported
model sees exactly the pixels that evaluation saw (8-bit, squashed to the run's size, same channels).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from medtl.data import IMAGE_SUFFIXES, match_channels, normalize
from medtl.dicom import is_dicom, read_dicom
from medtl.errors import MedtlError
from medtl.images import Decoding, decode_image, open_image
from medtl.metrics import class_table, decide
from medtl.pipeline import load_run
from medtl.strategies import Classifier
from medtl.train import pick_device, to_probs

READ_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError)


@dataclass
class Predictor:
    model: Classifier
    classes: list[str]
    threshold: float
    size: int
    in_chans: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    backbone: str
    device: torch.device
    decoding: Decoding = Decoding()

    @classmethod
    def from_run(cls, run_dir: str | Path, device: str = "auto") -> "Predictor":
        ckpt, cfg, model = load_run(run_dir)
        dev = pick_device(device)
        decoding = Decoding.of(cfg.data)
        return cls(model.to(dev).eval(), list(ckpt["classes"]), float(ckpt["threshold"]), int(ckpt["image_size"]),
                   int(ckpt["in_chans"]), tuple(ckpt["mean"]), tuple(ckpt["std"]), ckpt["backbone"], dev, decoding)

    @property
    def binary(self) -> bool:
        return len(self.classes) == 2

    def pixels(self, img: Image.Image) -> torch.Tensor:
        """uint8 (C, S, S) with the channels the model takes."""
        return match_channels(torch.from_numpy(decode_image(img, self.size, self.decoding.mode)), self.in_chans)

    def load(self, path: str | Path) -> torch.Tensor:
        """`pixels` of a file (image or DICOM, with the run's DICOM window)."""
        return self.pixels(open_image(str(path), self.decoding.window))

    def normalized(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 (N, C, S, S) -> the float input of the network, on its device."""
        return normalize(batch.to(self.device), self.mean, self.std).contiguous(memory_format=torch.channels_last)

    @torch.inference_mode()
    def probabilities(self, batch: torch.Tensor) -> np.ndarray:
        """(N, K) class probabilities of a uint8 batch; binary runs give [1 - p, p]."""
        return class_table(to_probs(self.model(self.normalized(batch)).float()).cpu().numpy())

    def decide(self, probs: np.ndarray) -> np.ndarray:
        """Class index per row: the run's threshold (chosen on validation) for binary runs, argmax otherwise."""
        return decide(probs, self.threshold)


def open_upload(data: bytes, window: str = "auto") -> Image.Image:
    """An uploaded file's bytes as an image (DICOM or anything PIL reads); ValueError when it is neither."""
    if is_dicom(data):
        return read_dicom(data, window)
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return img.copy()
    except READ_ERRORS as exc:
        raise ValueError(f"not an image PIL or pydicom can read ({exc.__class__.__name__})") from exc


def expand_inputs(paths: list[str | Path]) -> list[Path]:
    """Files as given; folders searched recursively for image and DICOM files (sorted)."""
    out = []
    for path in map(Path, paths):
        if path.is_dir():
            out += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            out.append(path)
        else:
            raise MedtlError(f"'{path}' does not exist; pass image or DICOM files or folders of them")
    if not out:
        raise MedtlError(f"no image files under {', '.join(map(str, paths))} (looked for {sorted(IMAGE_SUFFIXES)})")
    return out


def predict_files(pred: Predictor, paths: list[Path], batch_size: int = 32, progress: bool = True):
    """Rows (path, class, probabilities) for readable files, and {path: reason} for the others."""
    rows, failed = [], {}
    bar = tqdm(total=len(paths), desc="predict", unit="img", disable=not progress)
    for start in range(0, len(paths), batch_size):
        chunk, tensors = [], []
        for path in paths[start:start + batch_size]:
            try:
                tensors.append(pred.load(path))
                chunk.append(path)
            except READ_ERRORS as exc:
                failed[str(path)] = f"{exc.__class__.__name__}: {exc}"
        if tensors:
            probs = pred.probabilities(torch.stack(tensors))
            for path, k, p in zip(chunk, pred.decide(probs), probs):
                rows.append({"path": str(path), "predicted": pred.classes[k], "probabilities": p})
        bar.update(len(paths[start:start + batch_size]))
    bar.close()
    return rows, failed


def write_predictions(path: Path, pred: Predictor, rows: list[dict], failed: dict[str, str]) -> None:
    """CSV: path, predicted, one probability column per class, threshold, error (unreadable files too)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "predicted", *[f"prob_{c}" for c in pred.classes], "threshold", "error"])
        threshold = f"{pred.threshold:.6f}" if pred.binary else "argmax"
        for r in rows:
            w.writerow([r["path"], r["predicted"], *[f"{p:.6f}" for p in r["probabilities"]], threshold, ""])
        for p, reason in failed.items():
            w.writerow([p, "", *[""] * len(pred.classes), threshold, reason])
