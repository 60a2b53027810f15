"""Export a run to ONNX or TorchScript, with its preprocessing in the metadata and a parity check.

The exported graph takes float32 (N, C, S, S) pixels scaled to 0..1 (the 8-bit image squashed to S x S,
channels as in the metadata), applies the weights' mean/std itself and returns class probabilities.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from medtl.core.errors import MedtlError
from medtl.core.io import atomic_path
from medtl.core.runfolder import RunFolder
from medtl.deploy.predictor import Predictor
from medtl.models.engine import load_onnxruntime

log = logging.getLogger(__name__)

FORMATS = ("onnx", "torchscript")


class Exported(nn.Module):
    """Normalisation + network + probabilities, so a deployment needs only pixels in 0..1."""

    def __init__(self, pred: Predictor):
        super().__init__()
        self.net = pred.net  # with the run's test-time augmentation, as `medtl predict`
        mean, std = pred.preprocess.stats()  # the same normalisation as training and prediction
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.binary = pred.binary
        self.temperature = float(pred.temperature)  # a Python constant in the exported graph

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.net((x - self.mean) / self.std).float() / self.temperature
        if self.binary:  # a Python constant, so tracing and export see one branch
            p = torch.sigmoid(logits[:, 0])
            return torch.stack([1 - p, p], 1)
        return torch.softmax(logits, 1)


def metadata(pred: Predictor) -> dict[str, str]:
    return {"medtl.classes": json.dumps(pred.classes), "medtl.threshold": repr(pred.threshold),
            "medtl.temperature": repr(pred.temperature),
            "medtl.backbone": pred.backbone, "medtl.image_size": str(pred.size),
            "medtl.channels": str(pred.in_chans), "medtl.dicom_window": pred.decoding.window,
            "medtl.convert_mode": pred.decoding.mode, "medtl.mean": json.dumps(pred.mean), "medtl.std": json.dumps(pred.std),
            "medtl.input": (f"float32 (N, {pred.in_chans}, {pred.size}, {pred.size}), pixels / 255 of the 8-bit image "
                            f"resized to {pred.size}x{pred.size} (bilinear, aspect ratio not kept)"
                            + ("; gray images have one channel" if pred.in_chans == 1 else
                               "; gray images replicated to 3 channels")),
            "medtl.output": (f"float32 (N, {len(pred.classes)}) class probabilities in the order of medtl.classes"
                             + (f"; predict {pred.classes[1]} when its probability >= medtl.threshold"
                                if pred.binary else "; predict the argmax"))}


def sample_batch(pred: Predictor, images: list[str] | None, n: int = 8) -> torch.Tensor:
    """float 0..1 inputs for the parity check: real images when given, else seeded noise."""
    if images:
        return torch.stack([pred.load(p) for p in images]).float() / 255.0
    gen = torch.Generator().manual_seed(0)
    return torch.rand(n, pred.in_chans, pred.size, pred.size, generator=gen)


def export(run_dir: str | Path, fmt: str = "onnx", out: str | Path | None = None, images: list[str] | None = None,
           tolerance: float = 1e-4) -> tuple[Path, float]:
    """Write the model and check it against PyTorch on `images`; returns (path, max abs difference)."""
    if fmt not in FORMATS:
        raise MedtlError(f"export format {fmt!r}; valid: {', '.join(FORMATS)}")
    pred = Predictor.from_run(run_dir, device="cpu", engine="torch")
    module = Exported(pred).eval()
    x = sample_batch(pred, images)
    target = Path(out or RunFolder(run_dir).export(fmt))
    with torch.inference_mode():
        expected = module(x).numpy()
    with atomic_path(target) as tmp:  # the real name only once parity holds
        got = _onnx(module, pred, x, tmp) if fmt == "onnx" else _torchscript(module, pred, x, tmp)
        diff = float(np.abs(got - expected).max())
        if not diff <= tolerance:
            raise MedtlError(f"{target}: exported outputs differ from PyTorch by {diff:.2e} (> tolerance "
                             f"{tolerance:g}) on {len(x)} images; do not deploy it; report the backbone "
                             f"'{pred.backbone}' as a bug")
    log.info("exported %s; max |difference| to PyTorch %.2e on %d images", target, diff, len(x))
    return target, diff


def _onnx(module: nn.Module, pred: Predictor, x: torch.Tensor, target: Path) -> np.ndarray:
    import onnx
    ort = load_onnxruntime()  # telemetry off before it loads
    batch = torch.export.Dim("batch", min=1)
    program = torch.onnx.export(module, (x,), dynamo=True, input_names=["pixels"], output_names=["probabilities"],
                                dynamic_shapes={"x": {0: batch}}, verbose=False)
    program.optimize()
    program.save(str(target))
    model = onnx.load(str(target))
    for key, value in metadata(pred).items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
    onnx.checker.check_model(model)
    onnx.save(model, str(target))
    session = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


def _torchscript(module: nn.Module, pred: Predictor, x: torch.Tensor, target: Path) -> np.ndarray:
    with torch.inference_mode():
        traced = torch.jit.trace(module, x[:1], check_trace=False)
    torch.jit.save(traced, str(target), _extra_files={"medtl.json": json.dumps(metadata(pred))})
    loaded = torch.jit.load(str(target))
    with torch.inference_mode():
        return loaded(x).numpy()
