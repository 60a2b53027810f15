"""What medtl reads from each image file once, kept across runs in its cache folder: the content digest
(SHA-1 of the bytes), the 64-bit perceptual hash and the header facts (format, mode, bit depth, size). A rerun
on the same files then hashes and decodes none of them before training (its decoded images come from the
image cache), where it used to read and decode every file again for the audit.

A row is keyed by the image's ref (absolute path, or "<file.npz>::<split>::<index>") and holds only while its
file keeps the `Stamp` it had when read: size, modification and status-change times, inode (as git's index):
a file rewritten in place, a symlink pointed elsewhere, or a folder unpacked again with the old times is read
again. Facts of a file modified in the RACY_NS before it was read are not kept. The cache is one SQLite file
(Python's own sqlite3): each write is one transaction, so a Ctrl-C or a full disk keeps the rows written before
and leaves none half-written; a file that is not a readable database is set aside with a warning and rebuilt.
Only the process's current cache (`use`, set by a run for its cache folder) is read or written; with none set,
nothing is kept."""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Iterable, NamedTuple

from medtl.core.errors import MedtlError
from medtl.core.io import cache_root, make_dir

log = logging.getLogger(__name__)

FILE = "facts-v2.sqlite3"  # a new name when the rows' meaning changes, so older files are not read
SHA1_BYTES = 20
# a file modified this recently is not kept: a second write within the file system's time resolution (a few ms),
# with the same size, would keep its time, and its old facts would be trusted (git's "racily clean" entries)
RACY_NS = 2_000_000_000
STAMP = ("size", "mtime_ns", "ctime_ns", "inode")
COLUMNS = f"ref, {', '.join(STAMP)}, sha1, phash, format, mode, bits, width, height"
PLACEHOLDERS = ", ".join("?" for _ in COLUMNS.split(", "))


class Stamp(NamedTuple):
    """What says a file is unchanged since it was read (a tool that resets modification times cannot reset the
    status-change time; a new file has a new inode)."""

    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int

    @classmethod
    def of(cls, path: str) -> "Stamp":
        st = os.stat(path)
        return cls(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)

    def settled(self, read_at_ns: int) -> bool:
        """Modified at least RACY_NS before `read_at_ns` (time.time_ns() before the stat): its facts may be kept."""
        return self.mtime_ns < read_at_ns - RACY_NS


@dataclass(frozen=True)
class FileFacts:
    """One image's facts as read when its file had `stamp`."""

    stamp: Stamp
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
            raise self._error("cannot be opened", exc) from exc
        except sqlite3.DatabaseError as exc:  # not a database (a hostile or truncated file)
            self._set_aside(exc)
        try:
            return self._connect()  # a new, empty file
        except sqlite3.Error as exc:
            raise self._error("cannot be opened", exc) from exc

    def _set_aside(self, exc: sqlite3.DatabaseError) -> None:
        aside = self.path.with_name(self.path.name + ".unreadable")
        log.warning("image facts cache %s is not a readable database (%s); moved to %s, rebuilding it",
                    self.path, exc, aside.name)
        try:
            self.path.replace(aside)
        except FileNotFoundError:
            pass  # another process (a torchrun rank) moved it aside first
        except OSError as move:
            raise self._error("is unreadable and cannot be moved aside", move) from move

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=60, check_same_thread=False, isolation_level=None)
        try:
            db.execute(f"CREATE TABLE IF NOT EXISTS facts (ref TEXT PRIMARY KEY, {' INTEGER, '.join(STAMP)} INTEGER, "
                       "sha1 BLOB, phash TEXT, format TEXT, mode TEXT, bits INTEGER, width INTEGER, height INTEGER)")
            db.execute("SELECT count(*) FROM facts").fetchone()
        except BaseException:
            db.close()
            raise
        return db

    def _error(self, what: str, exc: Exception) -> MedtlError:
        return MedtlError(f"the image facts cache {self.path} {what} ({exc}); free disk space or fix its permissions, "
                          "delete the file, or set MEDTL_CACHE to another folder")

    def get(self, ref: str, stamp: Stamp) -> FileFacts | None:
        """The facts of `ref` when they were read from the file as it is now (the same stamp), else None."""
        try:
            with self._lock:
                row = self._db.execute(f"SELECT {COLUMNS} FROM facts WHERE ref = ?", (ref,)).fetchone()
        except sqlite3.Error as exc:
            raise self._error("cannot be read", exc) from exc
        if row is None or tuple(row[1:5]) != tuple(stamp):
            return None
        return _parsed(row)

    def put(self, rows: Iterable[tuple[str, FileFacts]]) -> None:
        """Keep these facts (replacing older ones of the same refs), all in one transaction."""
        values = [(ref, *f.stamp, f.sha1, None if f.phash is None else f"{f.phash:016x}", *astuple(f)[3:])
                  for ref, f in rows]
        if not values:
            return
        try:
            with self._lock:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    self._db.executemany(f"INSERT OR REPLACE INTO facts ({COLUMNS}) VALUES "
                                         f"({PLACEHOLDERS})", values)
                    self._db.execute("COMMIT")
                except BaseException:
                    if self._db.in_transaction:  # a failed COMMIT may have rolled back already
                        self._db.execute("ROLLBACK")
                    raise
        except sqlite3.Error as exc:
            raise self._error("cannot be written", exc) from exc

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _parsed(row: tuple) -> FileFacts | None:
    """A row as FileFacts; None for one whose values are not what this module writes (then read again)."""
    stamp, (sha1, phash, fmt, mode, bits, width, height) = Stamp(*row[1:5]), row[5:]
    try:
        if not isinstance(sha1, bytes) or len(sha1) != SHA1_BYTES:
            return None
        facts = FileFacts(stamp, sha1, None if phash is None else int(phash, 16), fmt, mode, bits=bits, width=width,
                          height=height)
    except (TypeError, ValueError):
        return None
    typed = all(isinstance(v, int) for v in (bits, width, height)) and all(isinstance(v, str) for v in (fmt, mode))
    return facts if typed and (facts.phash is None or 0 <= facts.phash < 1 << 64) else None


_current: FactsCache | None = None
_current_lock = threading.Lock()


def use(folder: Path | None) -> FactsCache | None:
    """Make the facts cache in `folder` this process's current one (None: keep nothing); returns it. A cache
    replaced here is not closed: a thread still reading it finishes (its connection closes with it)."""
    global _current
    with _current_lock:
        if folder is None:
            _current = None
        elif _current is None or _current.path != Path(folder).absolute() / FILE:
            _current = FactsCache(folder)
        return _current


def use_cache_root(configured: str | None) -> Path:
    """The cache folder (`cache.dir`, else $MEDTL_CACHE, else ~/.cache/medtl), its facts cache made current."""
    folder = cache_root(configured)
    use(folder)
    return folder


def current() -> FactsCache | None:
    return _current
