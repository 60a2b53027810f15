"""The device a run or a predictor uses."""

from __future__ import annotations

import torch

from medtl.core.config.sections import DEVICES
from medtl.core.errors import MedtlError


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise MedtlError("runtime.device=cuda but no CUDA device is visible; use --set runtime.device=auto")
    if name not in DEVICES:
        raise MedtlError(f"runtime.device={name!r}; valid: {', '.join(DEVICES)}")
    return torch.device(name)
