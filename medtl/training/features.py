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

from medtl.core.io import array_digest, atomic_write, make_dir, sweep_temps

log = logging.getLogger(__name__)

FEATURES_VERSION = "features-v1"


def feature_key(*parts: object) -> str:
    h = hashlib.sha256(FEATURES_VERSION.encode())
    for part in parts:
        h.update(repr(part).encode())
    return h.hexdigest()[:24]


def cached(cache_dir: Path, key: str, rows: int, compute: Callable[[], np.ndarray]) -> tuple[np.ndarray, bool]:
    """Features for `key` from the cache (memory-mapped, checked against the checksum written beside it), or
    computed and stored. Returns (array, hit)."""
    path = cache_dir / "features" / f"{key}.npy"
    digest = path.with_suffix(".sha256")
    sweep_temps(path.parent)  # what killed runs left
    if path.is_file():
        try:
            array = np.load(path, mmap_mode="r")
            if array.ndim != 2 or array.shape[0] != rows:
                log.warning("feature cache %s has shape %s, expected %d rows; rebuilding it", path, array.shape, rows)
            elif not digest.is_file() or digest.read_text().strip() != array_digest(array):
                log.warning("feature cache %s does not match its checksum (changed on disk); rebuilding it", path)
            else:
                return array, True
        except (ValueError, OSError) as exc:
            log.warning("feature cache %s is unreadable (%s); rebuilding it", path, exc)
    array = np.ascontiguousarray(compute(), dtype=np.float32)
    make_dir(path.parent)
    atomic_write(path, lambda fh: np.save(fh, array))  # a killed run never leaves a half-written cache
    atomic_write(digest, array_digest(array))  # after the array: a missing checksum means "rebuild"
    return np.load(path, mmap_mode="r"), False
