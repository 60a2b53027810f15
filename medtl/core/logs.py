"""Where medtl's messages go: the console (warnings only when quiet), a run's own log file, and progress.

Progress bars are drawn only on a terminal; when output goes to a file or a pipe, progress is a plain log
line every `LOG_EVERY_S` seconds (as Lightning does), so logs never fill with carriage-return frames."""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from pathlib import Path
from typing import Iterable, Iterator, TypeVar

LOGGER = "medtl"
LOG_EVERY_S = 30.0
T = TypeVar("T")
log = logging.getLogger(__name__)


class _Stderr(logging.StreamHandler):
    """A handler on whatever `sys.stderr` is when a message is written (not the stream it was made with: a
    caller, or a test, that swaps stderr later would otherwise get writes to a closed file)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def console(quiet: bool = False) -> None:
    """medtl's messages on stderr: INFO and up, or WARNING and up when quiet. Idempotent."""
    logger = logging.getLogger(LOGGER)
    logger.setLevel(logging.INFO)
    handler = next((h for h in logger.handlers if getattr(h, "_medtl_console", False)), None)
    if handler is None:
        handler = _Stderr()
        handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
        handler._medtl_console = True
        logger.addHandler(handler)
    handler.setLevel(logging.WARNING if quiet else logging.INFO)


@contextlib.contextmanager
def to_file(path: Path) -> Iterator[None]:
    """Also write medtl's INFO messages (with times) to `path` while the block runs."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    logger = logging.getLogger(LOGGER)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        handler.close()


def on_terminal() -> bool:
    return sys.stderr.isatty()


def progress(items: Iterable[T], desc: str, enabled: bool = True, total: int | None = None,
             unit: str = "it") -> Iterable[T]:
    """`items`, with a tqdm bar on a terminal, periodic log lines elsewhere, or nothing when not enabled."""
    if not enabled:
        return items
    if on_terminal():
        from tqdm import tqdm

        return tqdm(items, desc=desc, total=total, unit=unit, leave=False)
    return _logged(items, desc, total if total is not None else length(items), unit)


def length(items: Iterable) -> int | None:
    """len(items), or None for an iterable without one."""
    try:
        return len(items)  # type: ignore[arg-type]
    except TypeError:
        return None


def _logged(items: Iterable[T], desc: str, total: int | None, unit: str) -> Iterator[T]:
    start = last = time.monotonic()
    done = 0
    for item in items:
        yield item
        done += 1
        now = time.monotonic()
        if now - last >= LOG_EVERY_S:
            last = now
            of = f"/{total}" if total else ""
            log.info("%s: %d%s %s (%.0f s)", desc, done, of, unit, now - start)


@contextlib.contextmanager
def redirect_bars() -> Iterator[None]:
    """Log lines printed above a live tqdm bar instead of through it (on a terminal only)."""
    if not on_terminal():
        yield
        return
    from tqdm.contrib.logging import logging_redirect_tqdm

    with logging_redirect_tqdm(loggers=[logging.getLogger(LOGGER)]):
        yield
