"""The hook strategy=auto gives each candidate (`EpochClock`): after every epoch it measures the candidate's
epochs, fits the candidate's epochs to its deadline and re-plans the candidates still to run."""

from __future__ import annotations

import time

from medtl.training.fitstate import FitState
from medtl.training.prepared import Prepared

MARGIN = 1.1  # a candidate stretched to its deadline plans epochs this much longer than measured


class EpochClock:
    """The hook auto gives each candidate: after every epoch it measures the candidate's epochs (their own
    time: the candidate's setup is not in it), fits the candidate's epochs to its deadline (more when they are
    faster than planned, fewer when slower: the cosine schedule follows) and re-plans the candidates still to
    run; the progress is kept."""

    def __init__(self, run, p: Prepared):
        """`run`: the auto session (training/auto/search.py) whose costs, progress and re-plans this updates."""
        self.run, self.strategy, self.size = run, p.cfg.model.strategy, p.size
        self.timed = p.strategy.fine_tunes  # a probe's epochs are not a fine-tuning pace
        self.deadline, self.most = p.control.deadline, run.p.cfg.train.epochs

    def __call__(self, state: FitState) -> None:
        self.run.state.current["epoch"] = state.epoch
        timed = _timed(state.history)
        if not self.timed or not timed:
            self.run.save()
            return
        epoch = sum(timed) / len(timed)
        self.run.costs.measured(self.strategy, self.size, epoch)
        reason = f"{self.strategy} epoch {state.epoch} measured"
        if not state.stopped and self.deadline is not None:
            left = self.deadline - time.monotonic()
            fits = self.fitted(state, epoch, left)
            if fits != state.planned:
                reason += f"; its epochs {state.planned} -> {fits} ({epoch:.0f} s each, {left:.0f} s to its deadline)"
                state.planned = self.run.state.current["epochs"] = fits
        self.run.replan(self.strategy, state.epoch, reason)

    def fitted(self, state: FitState, epoch: float, left: float) -> int:
        """The candidate's epochs for `left` seconds to its deadline at `epoch` seconds each: fewer when the
        planned ones would not fit even at the measured pace, more when more fit with MARGIN to spare, else as
        planned (so that the schedule does not swing with the noise of epoch times)."""
        at_pace = state.epoch + max(int(left // epoch), 0)
        spared = min(self.most, state.epoch + max(int(left // (epoch * MARGIN)), 0))
        if state.planned > at_pace:
            return at_pace
        return max(state.planned, spared)

    def measure_candidate(self, history: list[dict], seconds: float) -> None:
        """The finished candidate's epochs as training timed them (history `seconds`), and its setup."""
        timed = _timed(history)
        if not self.timed or not timed:
            return
        self.run.costs.measured(self.strategy, self.size, sum(timed) / len(timed), seconds - sum(timed))
        self.run.replan(self.strategy, "end", f"{self.strategy} finished after {len(history)} epochs "
                                              f"in {seconds:.0f} s")


def _timed(history: list[dict]) -> list[float]:
    """Each epoch's own seconds, as the fit loop recorded them (the candidate's setup not in them)."""
    return [float(h["seconds"]) for h in history if "seconds" in h]
