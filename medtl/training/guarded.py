"""What a run that stops before its end tells the user: Ctrl-C, memory exhausted, or its folder deleted under
it, each one line saying what was kept and how to go on, instead of a traceback."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from medtl.core.config import RunConfig
from medtl.core.errors import Interrupted, MedtlError
from medtl.core.faults import memory_advice, out_of_memory
from medtl.core.runfolder import RunFolder


@contextmanager
def guarded(folder: RunFolder, cfg: RunConfig) -> Iterator[None]:
    """Ctrl-C, memory exhausted, or the run folder deleted under the run: one line saying how to go on (exit
    130 after Ctrl-C) instead of a traceback or a silent exit. The lock is released by the caller either way."""
    try:
        yield
    except KeyboardInterrupt:
        if cfg.model.strategy_spec.chooses:  # training/auto/state.py: finished candidates, the current one's epochs
            kept = "the finished candidates and epochs are kept" if folder.auto_progress.exists() else \
                "no epoch had finished"
        else:
            kept = "the last finished epoch is kept" if folder.state.exists() else "no epoch had finished"
        raise Interrupted(f"interrupted: {kept}; continue with `medtl train --resume {folder}`") from None
    except MedtlError:
        raise
    except Exception as exc:
        if not folder.path.is_dir():
            raise MedtlError(f"the run folder {folder} was removed while training ({type(exc).__name__}); nothing "
                             "of the run is kept: start it again") from exc
        if out_of_memory(exc):
            raise MedtlError(f"out of memory while training; the run in {folder} did not finish: "
                             f"{memory_advice()}, and start it again with another --name") from exc
        raise
