"""What an auto run keeps in its run folder so that `medtl train --resume RUN` continues it after a kill or
Ctrl-C: `auto-progress.json` (the budget used so far, the finished candidates and their validation scores,
the candidate in progress and its plan, the measured costs and every re-plan), written atomically after every
epoch and every candidate; `auto-best.pt`, the best candidate so far (its weights, history and validation
scores), written atomically as each candidate that beats it finishes; and one per-epoch training state per
candidate (`state-<strategy>-<size>.pt`), from which the candidate in progress resumes."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from medtl.core.errors import MedtlError
from medtl.core.io import write_json
from medtl.core.runfolder import RunFolder
from medtl.training import distributed
from medtl.training.results import SplitScores, TrainResult
from medtl.training.resume import load_state, save_state

log = logging.getLogger(__name__)

VERSION = 1


@dataclass
class Progress:
    """auto-progress.json. `elapsed`: seconds of the budget used when written; `tried`: the finished (or skipped)
    candidates' records; `best`: the index in `tried` of the best so far (its weights in auto-best.pt);
    `current`: the candidate in progress ({strategy, image_size, epochs, until: the elapsed second by which it
    stops, note, epoch: its last finished epoch}); `threads`: the training threads timed and the ones chosen
    (`runtime.quicker_threads`)."""

    budget: float
    elapsed: float = 0.0
    rule: str = ""
    tried: list[dict] = field(default_factory=list)
    best: int | None = None
    current: dict | None = None
    costs: dict = field(default_factory=dict)
    replans: list[dict] = field(default_factory=list)
    resumed: list[dict] = field(default_factory=list)
    threads: dict = field(default_factory=dict)
    version: int = VERSION


class Keeper:
    """Reads and writes an auto run's progress in its run folder (rank 0 writes); without a folder (auto's
    choice called on its own) it keeps nothing."""

    def __init__(self, folder: RunFolder | None):
        self.folder = folder
        self.writes = folder is not None and distributed.current().main

    @classmethod
    def of(cls, state_path: Path | None) -> "Keeper":
        """The keeper of the run folder that holds `state_path` (the run's own state.pt), if any."""
        return cls(RunFolder(state_path.parent) if state_path is not None else None)

    def load(self) -> Progress | None:
        """The progress a killed run left, or None (none kept: the run starts its candidates from the first)."""
        if self.folder is None or not self.folder.auto_progress.is_file():
            return None
        path = self.folder.auto_progress
        try:
            data = json.loads(path.read_text())
            progress = Progress(**data)
        except (ValueError, TypeError, OSError) as exc:
            raise MedtlError(f"auto progress {path} is unreadable ({exc.__class__.__name__}); delete it to start "
                             "the auto run's candidates again") from exc
        if progress.version != VERSION:
            raise MedtlError(f"auto progress {path} has version {progress.version}, this medtl reads {VERSION}; "
                             "delete it to start the auto run's candidates again")
        return progress

    def save(self, progress: Progress) -> None:
        if self.writes:
            write_json(self.folder.auto_progress, asdict(progress))

    def state(self, strategy: str, size: int) -> Path | None:
        return None if self.folder is None else self.folder.candidate_state(strategy, size)

    def save_best(self, record: dict, model: torch.nn.Module, result: TrainResult) -> None:
        """The best candidate so far: its record, weights, history and validation scores."""
        if not self.writes:
            return
        val = result.scores.get("val")
        save_state(self.folder.auto_best, {
            "record": record, "model": model.state_dict(), "history": result.history,
            "best_epoch": result.best_epoch,
            "val_probs": torch.from_numpy(np.ascontiguousarray(val.probs)) if val is not None else None,
            "val_labels": torch.from_numpy(np.ascontiguousarray(val.labels)) if val is not None else None})

    def load_best(self) -> tuple[dict, dict, TrainResult]:
        """(the best candidate's record, its weights, its result) as saved."""
        path = self.folder.auto_best
        if not path.is_file():
            raise MedtlError(f"{path} is missing though {self.folder.auto_progress.name} names a best candidate; "
                             f"delete {self.folder.auto_progress.name} to start the auto run's candidates again")
        saved = load_state(path)
        scores = {}
        if saved["val_probs"] is not None:
            scores["val"] = SplitScores(saved["val_probs"].numpy(), saved["val_labels"].numpy())
        return saved["record"], saved["model"], TrainResult(saved["history"], saved["best_epoch"], scores)

    def kept(self, strategy: str, size: int) -> bool:
        """Whether a candidate's per-epoch state is there to continue from."""
        path = self.state(strategy, size)
        return path is not None and path.is_file()

    def finished(self, strategy: str, size: int) -> None:
        """A candidate's per-epoch state is no longer needed once its result is kept."""
        path = self.state(strategy, size)
        if self.writes and path is not None:
            path.unlink(missing_ok=True)

    def clear(self) -> None:
        """A fresh (not resumed) auto run in this folder: what an earlier one left is not continued."""
        if self.writes:
            self.folder.remove_auto_progress()
