"""medtl: transfer learning for medical images, fast on a CPU.

The Python API (`medtl.train`, `medtl.Run`, `medtl.RunConfig`, `medtl.list_backbones`, `medtl.study`,
`medtl.audit`, ...) lives in `medtl.api`; it is imported on first use, so `import medtl` and the command line
start without loading torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from medtl.core.errors import MedtlError

__version__ = "0.1.0"
_API = ("BackboneInfo", "Predictions", "Run", "RunConfig", "audit", "calibrate", "card", "card_template", "evaluate",
        "list_backbones", "load_evaluation", "make_config", "report", "study", "train", "tune")
__all__ = ["MedtlError", "__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module("medtl.api"), name)
    raise AttributeError(f"module 'medtl' has no attribute {name!r}")
