"""Who runs which grid point of a study: one queue that any number of workers take points from.

`LocalQueue` (no `--storage`): one lock file per point in `<study>/.locks/`, held with `fcntl.flock` while the
point runs, so workers on one machine (or on a file system with working POSIX locks) never run the same point;
a worker that dies releases its locks with its process, and the next worker takes the point at once.

`PostgresQueue` (`--storage postgresql://...`): one row per point in the database `medtl tune` uses. A worker
claims the first pending point with `SELECT ... FOR UPDATE SKIP LOCKED` and an update in one transaction (so
each point goes to one worker), renews a lease on it from a heartbeat thread while it runs, and marks it done;
a point whose lease ran out (its worker died, or lost the database) is claimed again by another worker. The
worker that marks the last point done writes the report.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import socket
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Callable, ContextManager, Iterator, Protocol

from medtl.core.errors import MedtlError
from medtl.core.io import make_dir

log = logging.getLogger(__name__)

LEASE_SECONDS = 180  # a dead worker's point waits this long before another worker takes it
SCHEMA_LOCK = 0x6D65_6474_6C53  # advisory-lock key held while the tables are made and a study registered
PENDING, RUNNING, DONE, FAILED = "pending", "running", "done", "failed"


def masked(url: str) -> str:
    """The URL with its password as ***: what logs and messages show."""
    return re.sub(r"://([^:/@]*):[^@/]*@", r"://\1:***@", url)


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def digest(spec: dict[str, Any]) -> str:
    """A short hash of what defines a study's runs (base, grid, exclude): workers must agree on it."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Claim:
    """A point this worker holds; `check()` raises once the point was taken over (called after each epoch)."""

    def __init__(self, name: str, attempt: int = 1, taken_from: str = "") -> None:
        self.name, self.attempt, self.taken_from = name, attempt, taken_from
        self.token = ""  # the database queue's proof of ownership
        self.lost = threading.Event()
        self.lost_reason = ""

    def check(self, *_: Any) -> None:
        if self.lost.is_set():
            raise MedtlError(f"study point {self.name}: {self.lost_reason}; this worker stops (raise --lease-seconds "
                             "if a worker can be silent that long)")


class Queue(Protocol):
    report_due: bool  # True once this worker is the one to write the report

    def register(self, names: list[str], spec_digest: str, finished: Callable[[str], bool]) -> None: ...
    def next(self) -> Claim | None: ...
    def running(self, claim: Claim) -> ContextManager[None]: ...
    def finish(self, claim: Claim, state: str, error: str = "") -> None: ...
    def failed(self) -> list[tuple[str, str, str]]: ...
    def exclusive(self) -> ContextManager[None]: ...
    def close(self) -> None: ...


class LocalQueue:
    """Points claimed with one `flock`ed file each under `<study>/.locks/`."""

    report_due = True  # every local worker writes the report when it leaves (all points are done by then)

    def __init__(self, root: Path) -> None:
        self.dir = root / ".locks"
        self.names: list[str] = []
        self.finished: Callable[[str], bool] = lambda name: False
        self._held: dict[str, IO[str]] = {}

    def register(self, names: list[str], spec_digest: str, finished: Callable[[str], bool]) -> None:
        make_dir(self.dir)
        self.names, self.finished = names, finished

    def next(self) -> Claim | None:
        """A point no other worker holds and nobody finished; first without waiting, then waiting on the points
        other workers hold (a point whose worker died is free again, and is taken)."""
        for wait in (False, True):
            for name in self.names:
                if self.finished(name):
                    continue
                fh = self._lock(name, wait)
                if fh is None:
                    continue
                if self.finished(name):  # finished by its holder while we waited
                    _release(fh)
                    continue
                self._held[name] = fh
                return Claim(name)
        return None

    def _lock(self, name: str, wait: bool) -> IO[str] | None:
        fh = open(self.dir / f"{name}.lock", "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            fh.close()
            return None
        fh.seek(0)
        fh.truncate()
        fh.write(f"medtl worker {worker_id()}\n")
        fh.flush()
        return fh

    @contextmanager
    def running(self, claim: Claim) -> Iterator[None]:
        yield

    def finish(self, claim: Claim, state: str, error: str = "") -> None:
        _release(self._held.pop(claim.name))  # a failed point's folder stays unfinished: the next worker retries it

    def failed(self) -> list[tuple[str, str, str]]:
        return []

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """One worker at a time on what the study writes once: its report, its tracker run."""
        fh = open(self.dir / "report.lock", "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX)
            yield
        finally:
            _release(fh)

    def close(self) -> None:
        for fh in self._held.values():
            _release(fh)
        self._held.clear()


def _release(fh: IO[str]) -> None:
    fcntl.flock(fh, fcntl.LOCK_UN)
    fh.close()
