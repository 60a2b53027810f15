"""The device a run or a predictor uses."""

from __future__ import annotations

import torch

from medtl.core.errors import MedtlError


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise MedtlError("train.device=cuda but no CUDA device is visible; use --set train.device=auto")
    if name not in ("cpu", "cuda"):
        raise MedtlError(f"train.device={name!r}; valid: auto, cpu, cuda")
    return torch.device(name)
