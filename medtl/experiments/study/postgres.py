"""A study's queue in PostgreSQL (`medtl study SPEC --storage postgresql://...`): see queue.py for the rules.

Tables (made on first use): `medtl_study` (one row per study name, with the digest of its base, grid and
exclude) and `medtl_study_point` (one row per grid point: state pending / running / done / failed, the worker,
its lease, the number of attempts, the error of a failed run).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import sqlalchemy
from sqlalchemy import text

from medtl.core.errors import MedtlError
from medtl.experiments.study.queue import PENDING, RUNNING, SCHEMA_LOCK, Claim, masked, worker_id

log = logging.getLogger(__name__)

SCHEMA = ("CREATE TABLE IF NOT EXISTS medtl_study (name text PRIMARY KEY, digest text NOT NULL, "
          "created timestamptz NOT NULL DEFAULT now())",
          "CREATE TABLE IF NOT EXISTS medtl_study_point (study text NOT NULL REFERENCES medtl_study(name), "
          "point text NOT NULL, ord integer NOT NULL, state text NOT NULL DEFAULT 'pending', worker text, "
          "token text, lease_until timestamptz, attempts integer NOT NULL DEFAULT 0, error text, "
          "PRIMARY KEY (study, point))")
LEASE = "now() + make_interval(secs => :lease)"


class PostgresQueue:
    def __init__(self, url: str, study: str, lease_seconds: float = 180) -> None:
        if not url.startswith(("postgresql://", "postgresql+")):
            raise MedtlError(f"--storage {masked(url).split('://')[0]}://...: a study's queue needs PostgreSQL; "
                             "give postgresql://USER@HOST/DB, or leave out --storage to run on this machine")
        if not lease_seconds >= 3:
            raise MedtlError(f"--lease-seconds {lease_seconds}: give at least 3 (heartbeats go every third of it)")
        self.url, self.study, self.lease = url, study, float(lease_seconds)
        self.worker = worker_id()
        self.names: list[str] = []
        self.report_due = False
        self.engine = self._reach(lambda: sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool))

    def _reach(self, open_: Callable[[], Any]) -> Any:
        """`open_()`; a database that cannot be reached as one line naming the URL (password hidden)."""
        try:
            return open_()
        except ImportError as exc:
            raise MedtlError(f"--storage {masked(self.url)}: no database driver for this URL ({exc}); "
                             "postgresql:// works as installed") from exc
        except sqlalchemy.exc.SQLAlchemyError as exc:
            raise self._unreachable(exc) from exc

    def _unreachable(self, exc: sqlalchemy.exc.SQLAlchemyError) -> MedtlError:
        reason = masked(str(getattr(exc, "orig", None) or exc).strip().splitlines()[0])
        return MedtlError(f"--storage {masked(self.url)}: {reason}; check that the database server runs and the "
                          "URL's user, password, host, port and database, or leave out --storage")

    @contextmanager
    def _tx(self) -> Iterator[sqlalchemy.Connection]:
        """One transaction; the database lost on the way as one line, as `_reach` says it."""
        conn = self._reach(self.engine.connect)
        with conn:
            try:
                with conn.begin():
                    yield conn
            except sqlalchemy.exc.OperationalError as exc:  # the database lost on the way
                raise self._unreachable(exc) from exc

    def register(self, names: list[str], spec_digest: str, finished: Callable[[str], bool]) -> None:
        """The study and its points in the database (once; later workers find them); failed points are set
        pending again (a new worker retries them); points whose run folder is finished count as done."""
        self.names = names
        with self._tx() as c:
            c.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": SCHEMA_LOCK})
            for statement in SCHEMA:
                c.execute(text(statement))
            c.execute(text("INSERT INTO medtl_study (name, digest) VALUES (:s, :d) ON CONFLICT DO NOTHING"),
                      {"s": self.study, "d": spec_digest})
            known = c.execute(text("SELECT digest FROM medtl_study WHERE name = :s"), {"s": self.study}).scalar()
            if known != spec_digest:
                raise MedtlError(f"--storage {masked(self.url)}: study {self.study} in the database was started from "
                                 "another study file (its base, grid or exclude differ); give every worker the same "
                                 "file, or another study name")
            c.execute(text("INSERT INTO medtl_study_point (study, point, ord) VALUES (:s, :p, :o) "
                           "ON CONFLICT DO NOTHING"), [{"s": self.study, "p": n, "o": i} for i, n in enumerate(names)])
            c.execute(text("UPDATE medtl_study_point SET state = 'pending', error = NULL WHERE study = :s AND "
                           "state = 'failed'"), {"s": self.study})
            done = [n for n in names if finished(n)]
            if done:
                c.execute(text("UPDATE medtl_study_point SET state = 'done' WHERE study = :s AND point = ANY(:d) "
                           "AND state = 'pending'"),
                          {"s": self.study, "d": done})
            self.report_due = self._left(c) == 0  # nothing to run: this worker writes the report
        log.info("study %s: queue in %s, worker %s, lease %.0f s", self.study, masked(self.url), self.worker,
                 self.lease)

    def _left(self, c: sqlalchemy.Connection) -> int:
        return c.execute(text("SELECT count(*) FROM medtl_study_point WHERE study = :s AND state IN "
                              "('pending', 'running')"), {"s": self.study}).scalar()

    def next(self) -> Claim | None:
        """The first pending point (or one whose lease ran out) this worker can run; waits while other
        workers' points run, to take over any whose worker dies; None when none is pending or running."""
        while True:
            with self._tx() as c:
                row = c.execute(text(
                    "SELECT point, state, worker FROM medtl_study_point WHERE study = :s AND point = ANY(:n) AND "
                    "(state = 'pending' OR (state = 'running' AND lease_until < now())) ORDER BY ord LIMIT 1 "
                    "FOR UPDATE SKIP LOCKED"), {"s": self.study, "n": self.names}).first()
                if row is not None:
                    token = uuid.uuid4().hex
                    attempt = c.execute(text(
                        f"UPDATE medtl_study_point SET state = 'running', worker = :w, token = :t, lease_until = "
                        f"{LEASE}, attempts = attempts + 1 WHERE study = :s AND point = :p RETURNING attempts"),
                        {"w": self.worker, "t": token, "lease": self.lease, "s": self.study, "p": row.point}).scalar()
                    claim = Claim(row.point, attempt, row.worker if row.state == RUNNING else "")
                    claim.token = token
                    return claim
                running = c.execute(text(
                    "SELECT count(*) FROM medtl_study_point WHERE study = :s AND point = ANY(:n) AND state = "
                    "'running'"), {"s": self.study, "n": self.names}).scalar()
            if not running:
                return None
            time.sleep(min(5.0, self.lease / 4))

    @contextmanager
    def running(self, claim: Claim) -> Iterator[None]:
        """Renew the claim's lease every third of the lease while the block runs."""
        stop = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(claim, stop), name=f"lease {claim.name}", daemon=True)
        beat.start()
        try:
            yield
        finally:
            stop.set()
            beat.join()

    def _heartbeat(self, claim: Claim, stop: threading.Event) -> None:
        while not stop.wait(self.lease / 3):
            try:
                with self.engine.begin() as c:
                    kept = c.execute(text(
                        f"UPDATE medtl_study_point SET lease_until = {LEASE} WHERE study = :s AND point = :p AND "
                        "token = :t AND state = 'running'"),
                        {"lease": self.lease, "s": self.study, "p": claim.name, "t": claim.token}).rowcount
            except sqlalchemy.exc.SQLAlchemyError as exc:
                log.warning("study %s: lease on %s not renewed (%s); retrying", self.study, claim.name,
                            masked(str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]))
                continue
            if not kept:
                claim.lost_reason = "another worker took this point over (its lease ran out)"
                claim.lost.set()
                return

    def finish(self, claim: Claim, state: str, error: str = "") -> None:
        """Mark the point done, failed (with its error) or pending again (Ctrl-C); the worker that leaves no
        point pending or running writes the report."""
        with self._tx() as c:
            c.execute(text("SELECT 1 FROM medtl_study WHERE name = :s FOR UPDATE"), {"s": self.study})  # one at a time
            mine = c.execute(text(
                "UPDATE medtl_study_point SET state = :state, error = :e, lease_until = NULL WHERE study = :s AND "
                "point = :p AND token = :t AND state = 'running'"),
                {"state": state, "e": error[:2000] or None, "s": self.study, "p": claim.name,
                 "t": claim.token}).rowcount
            if not mine:
                log.warning("study %s: %s was taken over by another worker while this one ran it; its result is "
                            "left to that worker", self.study, claim.name)
                return
            if state != PENDING and self._left(c) == 0:
                self.report_due = True

    def failed(self) -> list[tuple[str, str, str]]:
        with self._tx() as c:
            rows = c.execute(text("SELECT point, worker, error FROM medtl_study_point WHERE study = :s AND state = "
                                  "'failed' ORDER BY ord"), {"s": self.study}).all()
        return [tuple(r) for r in rows]

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """No lock: only the worker that finished the last point writes the report (two workers starting at
        once may each make the study's tracker run; each nests its own points under the one it found)."""
        yield

    def close(self) -> None:
        self.engine.dispose()
