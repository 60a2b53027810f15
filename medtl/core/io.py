"""Writing files so that a crash, a Ctrl-C or a full disk never leaves a half-written one under the real name."""

from __future__ import annotations

import csv
import errno
import hashlib
import io
import json
import math
import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from medtl.core.errors import MedtlError

# the write failures a user can fix (a full disk, a read-only or foreign folder, a file where a folder should
# be): one line, not a traceback
USER_FIXABLE = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENAMETOOLONG,
                errno.ENOTDIR, errno.EEXIST}
# numpy's short write (`ndarray.tofile` on a full disk) raises an OSError without an errno
SHORT_WRITE = re.compile(r"^\d+ requested and \d+ written$")
TEMP = re.compile(r"^\.(.+)\.(\d+)\.tmp$")  # `temp_name`: what a killed process leaves behind


def temp_name(path: Path) -> Path:
    """The temporary name `path` is written under before its rename: `.NAME.PID.tmp` beside it."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def alive(pid: int) -> bool:
    """Whether a process `pid` exists here (another user's counts; so does this process)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False  # gone (or a number no process can have)
    except PermissionError:
        return True  # another user's process
    return True


def sweep_temps(folder: str | Path, name: str | None = None) -> list[Path]:
    """Remove the temporary files (`temp_name`, all of them or those of `name`) in `folder` whose process is
    gone (killed with -9, or by a power cut, before it could clean up); a live process's are kept."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed  # no folder yet (or unreadable: the write that follows says so)
    for entry in entries:
        match = TEMP.match(entry.name)
        if match and (name is None or match.group(1) == name) and not alive(int(match.group(2))):
            try:
                _remove(Path(entry.path))
                removed.append(Path(entry.path))
            except FileNotFoundError:
                pass  # another process swept it first
    return removed


def _remove(path: Path) -> None:
    """A file, or a folder with all it holds (an atomic folder's temporary)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        os.unlink(path)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary name beside `path` (`temp_name`) for a writer that takes a path: an exporter writing a file,
    or a folder filled file by file. When the block ends without an error it replaces `path` (a folder there
    is removed first); on any error, or when the block raises to refuse the result, it is removed and `path`
    is untouched. What a killed writer of `path` left is swept first."""
    path = Path(path)
    tmp = temp_name(path)
    sweep_temps(path.parent, path.name)
    try:
        yield tmp
        with cannot_write(path):
            if path.is_dir() and tmp.is_dir():
                shutil.rmtree(path)
            os.replace(tmp, path)
    finally:
        if tmp.exists() or tmp.is_symlink():
            _remove(tmp)


def csv_text(header: Sequence[str], rows: Iterable[Sequence[Any] | Mapping[str, Any]]) -> str:
    """CSV with a header row: every cell quoted when it must be (a file name may hold a comma, a tab or a
    newline), "\n" line ends; a row is a sequence of cells, or a mapping read by the header's names."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([row.get(h, "") for h in header] if isinstance(row, Mapping) else row for row in rows)
    return buf.getvalue()


def write_csv(path: str | Path, header: Sequence[str], rows: Iterable[Sequence[Any] | Mapping[str, Any]]) -> Path:
    """`csv_text` written atomically (`atomic_write`)."""
    return atomic_write(path, csv_text(header, rows))


def atomic_write(path: str | Path, content: str | bytes | Callable[[IO[bytes]], Any], fsync: bool = False) -> Path:
    """Write `content` (text, bytes, or a function that writes to a binary file) to a temporary file beside
    `path`, then rename it over `path`. On any failure the temporary file is removed and `path` is untouched."""
    path = Path(path)
    tmp = temp_name(path)
    sweep_temps(path.parent, path.name)  # what a killed writer of this file left
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
        if not isinstance(exc, OSError):
            return False
        if exc.errno in USER_FIXABLE:
            reason = exc.strerror
        elif exc.errno is None and SHORT_WRITE.match(str(exc)):
            reason = f"the disk took only part of it ({exc})"
        else:
            return False
        raise MedtlError(f"cannot write {self.path}: {reason}; free disk space, fix the folder's "
                         "permissions, or write elsewhere (--output-dir, MEDTL_CACHE)") from exc


def cache_root(configured: str | None = None) -> Path:
    """The cache folder: `configured` (cache.dir), else $MEDTL_CACHE, else ~/.cache/medtl; refused in one line
    when a file stands where it or one of its parents should be a folder."""
    env = os.environ.get("MEDTL_CACHE")
    path = Path(configured or env or Path.home() / ".cache" / "medtl")
    blocker = next((p for p in (path, *path.parents) if p.exists() or p.is_symlink()), None)
    if blocker is None or blocker.is_dir():
        return path
    if configured:
        raise MedtlError(f"cache.dir {path}: {blocker} is not a folder; set cache.dir to a folder "
                         "(made if missing)")
    if env:
        raise MedtlError(f"MEDTL_CACHE={path}: {blocker} is not a folder; point MEDTL_CACHE at a folder "
                         "(made if missing), or unset it")
    raise MedtlError(f"the cache folder {path}: {blocker} is not a folder; move it away, or set MEDTL_CACHE to a "
                     "folder")


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
