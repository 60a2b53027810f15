"""Writing files so that a crash, a Ctrl-C or a full disk never leaves a half-written one under the real name."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import IO, Any, Callable

import numpy as np


def atomic_write(path: str | Path, content: str | bytes | Callable[[IO[bytes]], Any], fsync: bool = False) -> Path:
    """Write `content` (text, bytes, or a function that writes to a binary file) to a temporary file beside
    `path`, then rename it over `path`. On any failure the temporary file is removed and `path` is untouched."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            if isinstance(content, str):
                fh.write(content.encode())
            elif isinstance(content, bytes):
                fh.write(content)
            else:
                content(fh)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def clean(value: Any) -> Any:
    """JSON-safe copy: numpy scalars and arrays to Python, NaN and inf to None (undefined, never 0)."""
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if isinstance(value, np.ndarray):
        return clean(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: str | Path, data: Any) -> Path:
    return atomic_write(path, json.dumps(clean(data), indent=2) + "\n")
