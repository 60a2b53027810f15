"""A trained model as one record: weights, the resolved config, classes, the validation threshold and the
preprocessing that travels with the weights. Saved atomically; loads with `weights_only=True`."""

from __future__ import annotations

import dataclasses

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from medtl.core.config import RunConfig, from_dict, to_dict
from medtl.core.errors import MedtlError
from medtl.core.faults import out_of_memory
from medtl.core.io import atomic_write
from medtl.core.runfolder import RunFolder
from medtl.data.images import Decoding
from medtl.data.preprocess import Preprocess
from medtl.models.safe_load import READ_ERRORS, kind, load_plain, reason
from medtl.models.strategies import Classifier, build_classifier

log = logging.getLogger(__name__)


@dataclass
class Checkpoint:
    weights: dict[str, torch.Tensor]  # the classifier's state dict
    config: RunConfig
    classes: list[str]
    threshold: float  # binary runs: chosen on validation; multiclass runs predict the argmax
    preprocess: Preprocess
    backbone: str
    temperature: float = 1.0  # logits are divided by it (eval.calibrate=temperature; 1: as trained)
    source: str = ""  # the file it was loaded from (for messages)

    @property
    def binary(self) -> bool:
        return len(self.classes) == 2

    def to_dict(self) -> dict:
        return {"model": self.weights, "config": to_dict(self.config), "classes": list(self.classes),
                "threshold": float(self.threshold), "backbone": self.backbone, "temperature": float(self.temperature),
                **self.preprocess.to_dict()}

    def save(self, path: str | Path) -> str:
        """Write atomically; returns the digest of the weights (the same weights give the same digest,
        however torch lays out the file)."""
        state = self.to_dict()
        atomic_write(path, lambda fh: torch.save(state, fh))
        return state_digest(state["model"])

    @classmethod
    def load(cls, path: str | Path) -> "Checkpoint":
        path = Path(path)
        if not path.is_file():
            raise MedtlError(f"{path} not found; pass a run folder written by `medtl train`")
        try:
            d = load_plain(path, "checkpoint", "medtl checkpoints hold only tensors and plain values; train the run "
                           "again")
        except READ_ERRORS as exc:
            if out_of_memory(exc):  # not a damaged file: told as memory exhausted where it is caught
                raise
            raise MedtlError(f"checkpoint {path} is unreadable ({reason(exc)}); it is damaged or not a medtl "
                             "checkpoint: train the run again") from exc
        _check_layout(path, d)
        _verify(path, d["model"])
        try:
            cfg = from_dict(RunConfig, d["config"], where=str(path))
            # older checkpoints: the decoding from the config, with the full JPEG decoding they were trained on
            decoding = None if "dicom_window" in d else dataclasses.replace(Decoding.of(cfg.data), fast_jpeg=False)
            return cls(d["model"], cfg, list(d["classes"]), float(d["threshold"]), Preprocess.from_dict(d, decoding),
                       d["backbone"], float(d.get("temperature", 1.0)), str(path))
        except (TypeError, ValueError) as exc:
            raise MedtlError(f"checkpoint {path} is not a medtl checkpoint (a bad value: {reason(exc)}); pass a run "
                             "folder written by `medtl train`, or train the run again") from exc

    def build(self) -> Classifier:
        """The classifier with these weights, in eval mode (no pretrained weights are read)."""
        num_out = 1 if self.binary else len(self.classes)
        model = build_classifier(self.config.model, num_out, self.preprocess.in_chans, "none")
        try:
            model.load_state_dict(self.weights)
        except RuntimeError as exc:
            raise MedtlError(f"checkpoint {self.source or '(in memory)'} is not a medtl checkpoint (its weights do not "
                             f"fit backbone {self.backbone}: {reason(exc)}); pass a run folder written by `medtl "
                             "train`, or train the run again") from exc
        return model.eval()


FIELDS = {"model": dict, "config": dict, "classes": (list, tuple), "threshold": (int, float), "backbone": str,
          "image_size": int, "in_chans": int, "mean": (list, tuple), "std": (list, tuple)}


def _check_layout(path: Path, d: object) -> None:
    """What `to_dict` writes, each field of its type; anything else (a list, a bare state dict) is one line."""
    if isinstance(d, dict) and d and all(isinstance(v, torch.Tensor) for v in d.values()):
        raise MedtlError(f"checkpoint {path} is not a medtl checkpoint ({kind(d)}: bare weights, not a run); pass a "
                         f"run folder written by `medtl train`, or train one from them: medtl train DATA --weights "
                         f"{path}")
    problem = _layout_problem(d)
    if problem:
        raise MedtlError(f"checkpoint {path} is not a medtl checkpoint ({problem}); pass a run folder written by "
                         "`medtl train`, or train the run again")


def _layout_problem(d: object) -> str:
    """'' when `d` has every field of its type; else what is wrong, in a few words."""
    if not isinstance(d, dict):
        return kind(d)
    missing = [k for k in FIELDS if k not in d]
    if missing:
        return f"{kind(d)}; no {', '.join(missing)}"
    wrong = [k for k, t in FIELDS.items() if not isinstance(d[k], t) or isinstance(d[k], bool)]
    weights, classes = d["model"], d["classes"]
    if not wrong and not (weights and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                          for k, v in weights.items())):
        wrong = ["model"]
    if not wrong and (len(classes) < 2 or not all(isinstance(c, str) for c in classes)):
        wrong = ["classes"]
    return f"{wrong[0]} is {kind(d[wrong[0]])}" if wrong else ""


def _verify(path: Path, weights: dict) -> None:
    """The weights must be the ones the run recorded in its metrics (`weights_sha256`), when it did."""
    metrics = RunFolder(path.parent).metrics
    if not metrics.is_file():
        return
    try:
        expected = json.loads(metrics.read_text()).get("weights_sha256")
    except (OSError, ValueError) as exc:
        log.warning("cannot check %s against %s (%s): the weights are used unverified", path, metrics, exc)
        return
    if expected and state_digest(weights) != expected:
        raise MedtlError(f"checkpoint {path} holds other weights than its run recorded (weights_sha256 in "
                         f"{metrics.name}): the file changed after training; train the run again")


def state_digest(state: dict) -> str:
    """SHA-256 of a state dict's content (tensor bytes and values in key order), independent of how torch.save
    laid out the file: two checkpoints with this digest hold the same weights and settings."""
    h = hashlib.sha256()

    def walk(obj) -> None:
        if isinstance(obj, torch.Tensor):
            h.update(str((obj.dtype, tuple(obj.shape))).encode())
            h.update(obj.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
                     if obj.numel() else b"")
        elif isinstance(obj, dict):
            for k in sorted(obj, key=str):
                h.update(str(k).encode())
                walk(obj[k])
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                walk(v)
        else:
            h.update(json.dumps(obj, sort_keys=True, default=str).encode())
    walk(state)
    return h.hexdigest()
