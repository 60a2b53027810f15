"""What medtl reads from each image file once, kept across runs in its cache folder: the content digest
(SHA-1 of the bytes), the 64-bit perceptual hash and the header facts (format, mode, bit depth, size). A rerun
on the same files then hashes and decodes none of them before training (its decoded images come from the
image cache), where it used to read and decode every file again for the audit.

A row is keyed by the image's ref (absolute path, or "<file.npz>::<split>::<index>") and holds only while its
file keeps the size and modification time it had when read, as `images.content_digest` keys its memory: a
file rewritten in place is read again. The cache is one SQLite file (Python's own sqlite3): each write is one
transaction, so a Ctrl-C or a full disk keeps the rows written before and leaves none half-written; a file
that is not a readable database is set aside with a warning and rebuilt. Only the process's current cache
(`use`, set by a run for its cache folder) is read or written; with none set, nothing is kept."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Iterable

from medtl.core.errors import MedtlError
from medtl.core.io import cache_root, make_dir

log = logging.getLogger(__name__)

FILE = "facts-v1.sqlite3"  # a new name when the rows' meaning changes, so older files are not read
SHA1_BYTES = 20
# a file modified this recently is not kept: a second write within the file system's time resolution (a few ms),
# with the same size, would keep its time, and its old facts would be trusted (git's "racily clean" entries)
RACY_NS = 2_000_000_000
COLUMNS = "ref, size, mtime_ns, sha1, phash, format, mode, bits, width, height"


@dataclass(frozen=True)
class FileFacts:
    """One image's facts as read when its file had `size` bytes and modification time `mtime_ns`."""

    size: int
    mtime_ns: int
    sha1: bytes
    phash: int | None  # None: only the header was read, not the pixels
    format: str
    mode: str
    bits: int
    width: int
    height: int


class FactsCache:
    """The facts of image files under one cache folder, shared by threads (one connection, one lock) and by
    processes (SQLite's own locking)."""

    def __init__(self, folder: Path):
        self.path = make_dir(Path(folder).absolute()) / FILE
        self._lock = threading.Lock()
        self._db = self._open()

    def _open(self) -> sqlite3.Connection:
        try:
            return self._connect()
        except sqlite3.OperationalError as exc:  # cannot open, locked, read-only, disk I/O
            raise MedtlError(f"the image facts cache {self.path} cannot be opened ({exc}); free disk space or fix its "
                             "permissions, or set MEDTL_CACHE to another folder") from exc
        except sqlite3.DatabaseError as exc:  # not a database (a hostile or truncated file)
            aside = self.path.with_name(self.path.name + ".unreadable")
            log.warning("image facts cache %s is not a readable database (%s); moved to %s, rebuilding it",
                        self.path, exc, aside.name)
            self.path.replace(aside)
            return self._connect()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=60, check_same_thread=False, isolation_level=None)
        try:
            db.execute("CREATE TABLE IF NOT EXISTS facts (ref TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, "
                       "sha1 BLOB, phash TEXT, format TEXT, mode TEXT, bits INTEGER, width INTEGER, height INTEGER)")
            db.execute("SELECT count(*) FROM facts").fetchone()
        except BaseException:
            db.close()
            raise
        return db

    def get(self, ref: str, size: int, mtime_ns: int) -> FileFacts | None:
        """The facts of `ref` when they were read from the file as it is now (same size and time), else None."""
        with self._lock:
            row = self._db.execute(f"SELECT {COLUMNS} FROM facts WHERE ref = ?", (ref,)).fetchone()
        if row is None or tuple(row[1:3]) != (size, mtime_ns):
            return None
        return _parsed(row)

    def put(self, rows: Iterable[tuple[str, FileFacts]]) -> None:
        """Keep these facts (replacing older ones of the same refs), all in one transaction; facts of a file
        modified in the last RACY_NS are not kept (read again next time)."""
        settled = time.time_ns() - RACY_NS
        values = [(ref, f.size, f.mtime_ns, f.sha1, None if f.phash is None else f"{f.phash:016x}",
                   *astuple(f)[4:]) for ref, f in rows if f.mtime_ns < settled]
        if not values:
            return
        try:
            with self._lock:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    self._db.executemany(f"INSERT OR REPLACE INTO facts ({COLUMNS}) VALUES "
                                         "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", values)
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
        except sqlite3.Error as exc:
            raise MedtlError(f"could not write the image facts cache {self.path} ({exc}); free disk space, or set "
                             "MEDTL_CACHE to another folder") from exc

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _parsed(row: tuple) -> FileFacts | None:
    """A row as FileFacts; None for one whose values are not what this module writes (then read again)."""
    _, size, mtime_ns, sha1, phash, fmt, mode, bits, width, height = row
    try:
        if not isinstance(sha1, bytes) or len(sha1) != SHA1_BYTES:
            return None
        facts = FileFacts(size, mtime_ns, sha1, None if phash is None else int(phash, 16), fmt, mode, bits, width,
                          height)
    except (TypeError, ValueError):
        return None
    typed = all(isinstance(v, int) for v in (bits, width, height)) and all(isinstance(v, str) for v in (fmt, mode))
    return facts if typed and (facts.phash is None or 0 <= facts.phash < 1 << 64) else None


_current: FactsCache | None = None
_current_lock = threading.Lock()


def use(folder: Path | None) -> FactsCache | None:
    """Make the facts cache in `folder` this process's current one (None: keep nothing); returns it."""
    global _current
    with _current_lock:
        if _current is not None and (folder is None or _current.path != Path(folder).absolute() / FILE):
            _current.close()
            _current = None
        if folder is not None and _current is None:
            _current = FactsCache(folder)
        return _current


def use_cache_root(configured: str | None) -> Path:
    """The cache folder (`cache.dir`, else $MEDTL_CACHE, else ~/.cache/medtl), its facts cache made current."""
    folder = cache_root(configured)
    use(folder)
    return folder


def current() -> FactsCache | None:
    return _current
