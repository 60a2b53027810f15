"""Writing files so that a crash, a Ctrl-C or a full disk never leaves a half-written one under the real name."""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
from pathlib import Path
from typing import IO, Any, Callable

import numpy as np

from medtl.core.errors import MedtlError

# the write failures a user can fix (a full disk, a read-only or foreign folder): one line, not a traceback
USER_FIXABLE = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENAMETOOLONG}


def atomic_write(path: str | Path, content: str | bytes | Callable[[IO[bytes]], Any], fsync: bool = False) -> Path:
    """Write `content` (text, bytes, or a function that writes to a binary file) to a temporary file beside
    `path`, then rename it over `path`. On any failure the temporary file is removed and `path` is untouched."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with cannot_write(path), open(tmp, "wb") as fh:
            if isinstance(content, str):
                fh.write(content.encode())
            elif isinstance(content, bytes):
                fh.write(content)
            else:
                content(fh)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        with cannot_write(path):
            os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


class cannot_write:
    """Turn a write failure the user can fix into one MedtlError line naming the path and the fix."""

    def __init__(self, path: str | Path):
        self.path = path

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, exc, tb) -> bool:
        if isinstance(exc, OSError) and exc.errno in USER_FIXABLE:
            raise MedtlError(f"cannot write {self.path}: {exc.strerror}; free disk space, fix the folder's "
                             "permissions, or write elsewhere (--output-dir, MEDTL_CACHE)") from exc
        return False


def make_dir(path: str | Path) -> Path:
    """mkdir -p, with a failure the user can fix as one MedtlError line."""
    path = Path(path)
    with cannot_write(path):
        path.mkdir(parents=True, exist_ok=True)
    return path


SEAL = b"medtl-sealed-v1\n"  # then the payload's SHA-256 (32 bytes), then the payload


def sealed(payload: bytes) -> bytes:
    """`payload` with a checksum in front, so flipped or lost bytes are found before anything uses them."""
    return SEAL + hashlib.sha256(payload).digest() + payload


def unseal(data: bytes, where: str | Path) -> bytes:
    """The payload of `sealed` bytes; ValueError naming `where` when the file is not sealed or does not match."""
    head = len(SEAL) + 32
    if not data.startswith(SEAL) or len(data) < head:
        raise ValueError(f"{where} is not a file medtl wrote (no checksum header)")
    payload = data[head:]
    if hashlib.sha256(payload).digest() != data[len(SEAL):head]:
        raise ValueError(f"{where} does not match its checksum: its bytes changed after medtl wrote it")
    return payload


def array_digest(array: np.ndarray) -> str:
    """SHA-256 of an array's bytes (a memory-mapped one is read, not copied): a cache's content check."""
    return hashlib.sha256(memoryview(np.ascontiguousarray(array)).cast("B")).hexdigest()


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
