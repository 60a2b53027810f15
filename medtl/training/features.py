"""The on-disk feature cache for frozen backbones.

A frozen backbone maps an image to the same features every epoch, so `linear` computes them once
and trains the head on the cache. The file name is a hash of everything the features depend on
(image content, backbone, weights, size, channels, normalisation, augmentation view), so a stale
cache is never read; an unreadable one is rebuilt with a warning.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Callable

import numpy as np

from medtl.core.io import atomic_write

log = logging.getLogger(__name__)

FEATURES_VERSION = "features-v1"


def feature_key(*parts: object) -> str:
    h = hashlib.sha256(FEATURES_VERSION.encode())
    for part in parts:
        h.update(repr(part).encode())
    return h.hexdigest()[:24]


def cached(cache_dir: Path, key: str, rows: int, compute: Callable[[], np.ndarray]) -> tuple[np.ndarray, bool]:
    """Features for `key` from the cache (memory-mapped), or computed and stored. Returns (array, hit)."""
    path = cache_dir / "features" / f"{key}.npy"
    if path.is_file():
        try:
            array = np.load(path, mmap_mode="r")
            if array.ndim == 2 and array.shape[0] == rows:
                return array, True
            log.warning("feature cache %s has shape %s, expected %d rows; rebuilding it", path, array.shape, rows)
        except (ValueError, OSError) as exc:
            log.warning("feature cache %s is unreadable (%s); rebuilding it", path, exc)
    array = np.ascontiguousarray(compute(), dtype=np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda fh: np.save(fh, array))  # a killed run never leaves a half-written cache
    return np.load(path, mmap_mode="r"), False
