"""strategy=auto: the best model the time budget allows, chosen on validation only.

Seed 001's rule orders the candidates: train a new head on the frozen backbone when the data are few and
close to ImageNet, fine-tune the top stages when they are few and far, fine-tune everything when they are
many. `linear` runs first: its features are cached and cheap, and how well it separates validation measures
the similarity. The fine-tuning candidates then run in the rule's order (LP-FT: each head starts from the
linear probe), each in its share of the time left, at the largest image size that fits `MIN_EPOCHS`; the
other strategies follow in the time the rule's candidates left. Plans come from measured seconds
(training/auto/plan.py): after every epoch of every candidate the plans still to run are recomputed, and
each re-plan is recorded; the running candidate's own epochs are fitted to its deadline after each of them
(training/auto/clock.py), so its share is used. When no candidate fits its share, the cheapest one that can finish an
epoch in all the time left runs, stopped by the deadline (by the estimate or, within TRY_FACTOR of it, to
measure instead). Time left when every candidate has run goes to the one still improving when its time ran
out (`continue_improving`). The candidate with the best validation score is kept; test
is never looked at here (the run's finalize phase scores it once, for the chosen model). Every candidate,
its score, its time, the re-plans, the choice and why go to the run folder (auto.json, and metrics.json's
"auto"); a killed run continues with `medtl train --resume` (training/auto/state.py).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from typing import Callable

from medtl.core.config import RunConfig, run_budget
from medtl.core.strategies import get_strategy
from medtl.models.strategies import Classifier, build_classifier
from medtl.training.auto.clock import EpochClock
from medtl.training.auto.plan import FT_BATCH, MIN_EPOCHS, Costs, fit, mirror_seconds, sizes
from medtl.training.auto.plan import step_seconds as _step_seconds
from medtl.training.auto.record import AutoRecord
from medtl.training.auto.state import Keeper, Progress
from medtl.training.prepared import Prepared
from medtl.training.results import AUC_TIE, TrainResult, beats
from medtl.training.runtime import quicker_threads, release_memory, seed_everything

log = logging.getLogger(__name__)

FEW = 1000  # training images below which the data count as few
CLOSE = 0.90  # the linear probe's validation AUC from which the data count as close to ImageNet
FIRST_SHARE = 0.65  # of the time left, for a fine-tuning candidate that another one of the rule follows
RESERVE_S = 15.0  # kept for scoring, figures and the checkpoint after the last candidate
TRY_FACTOR = 4.0  # when no candidate fits by the estimate, the cheapest still runs if its epoch is estimated at
# most this many times the time left (a step timed on a busy machine was 4-20x slower than its later epochs)
CONTINUED = "continued from"  # the note of a candidate continued in the time the others left
__all__ = ["FEW", "CLOSE", "MIN_EPOCHS", "FT_BATCH", "AUC_TIE", "Candidate", "Outcome", "plan", "choose", "beats"]

TrainFn = Callable[..., TrainResult]  # (Prepared, model, progress, hooks) -> TrainResult


@dataclass
class Candidate:
    strategy: str
    image_size: int
    epochs: int = 0  # planned (fit may stop earlier: early stopping, budget)
    epochs_run: int = 0
    best_epoch: int = 0
    val_auc: float = math.nan
    val_loss: float = math.nan
    seconds: float = 0.0
    note: str = ""


@dataclass
class Outcome:
    p: Prepared  # the chosen candidate's (its config, image size)
    model: Classifier
    result: TrainResult  # validation scores only: test is scored by the run's finalize phase
    record: AutoRecord | None  # set when the choice is made


def plan(n_train: int, similarity: float) -> tuple[list[str], str]:
    """The fine-tuning candidates to try after linear, in seed 001's order, and why."""
    close = similarity >= CLOSE  # nan (validation AUC undefined): not close
    sim = f"linear probe val AUC {similarity:.3f} {'>=' if close else '<'} {CLOSE}"
    if n_train < FEW and close:
        return ["partial"], f"few images ({n_train} < {FEW}), close to ImageNet ({sim}): linear is the rule; " \
                            "partial checks it"
    if n_train < FEW:
        return ["partial", "full"], f"few images ({n_train} < {FEW}), far from ImageNet ({sim}): top stages first"
    return ["full", "partial"], f"many images ({n_train} >= {FEW}; {sim}): fine-tune everything first"


def choose(p: Prepared, train_fn: TrainFn, progress: bool, prepare_seconds: float) -> Outcome:
    """Run the candidates within `p.control.deadline` and keep the best on validation; with
    `p.control.resume`, continue the candidates a killed run left (finished ones kept, the one in progress from
    its last epoch, the budget what was left)."""
    run = _Session(p, train_fn, progress, prepare_seconds)
    if run.state.current and not get_strategy(run.state.current["strategy"]).fine_tunes:  # the probe
        run.resume_current()
    elif not run.tried:
        run.attempt("linear", p.size, p.cfg.train.epochs, run.end, "")
    order, why = plan(len(p.splits.refs["train"]), run.tried[0].val_auc)
    run.state.rule = why
    log.info("auto: %s; next: %s", why, ", ".join(order))
    if math.isnan(run.costs.step):  # the first fine-tuning plan's unit, until an epoch is measured
        run.costs.step, run.state.threads = quicker_threads(lambda: _step_seconds(p))
    run.end -= mirror_seconds(p, run.costs.step)
    # the rule's candidates share the time; the others run after them in what is left (one that stopped early
    # leaves time: full after partial on few images), and are not tried when nothing fits
    run.order = order + [s for s in ("full", "partial") if s not in order]
    run.rule_count = len(order)
    if run.state.current:
        run.resume_current()
    while (strategy := run.next()) is not None:
        run.run_next(strategy)
    run.continue_improving()
    return run.outcome()


class _Session:
    """One auto run's candidates, costs and progress (kept in the run folder after every epoch)."""

    def __init__(self, p: Prepared, train_fn: TrainFn, progress: bool, prepare_seconds: float):
        self.p, self.train_fn, self.progress, self.prepare_seconds = p, train_fn, progress, prepare_seconds
        self.keeper = Keeper.of(p.control.state_path)
        budget = run_budget(p.cfg) or 0.0
        saved = self.keeper.load() if p.control.resume else None
        if saved is None:
            self.keeper.clear()
        self.state = saved or Progress(budget)
        self.origin = p.control.deadline - budget - self.state.elapsed  # the budget's start on this process's clock
        self.end = p.control.deadline - self.state.elapsed - RESERVE_S
        self.costs = Costs.of(p)
        for key, value in self.state.costs.items():
            setattr(self.costs, key, math.nan if value is None else value)  # JSON keeps NaN as null
        self.tried = [_candidate(c) for c in self.state.tried]
        self.best: tuple[Outcome, Candidate] | None = None
        self.order: list[str] = []
        self.rule_count = 0
        if saved is not None:
            self.state.resumed.append({"at_seconds": round(self.state.elapsed, 1),
                                       "kept": [c.strategy for c in self.tried if c.image_size],
                                       "in_progress": (self.state.current or {}).get("strategy")})
            log.info("auto: resuming after %.0f s of %.0f: kept %s", self.state.elapsed, budget,
                     ", ".join(c.strategy for c in self.tried) or "nothing")
            if self.state.best is not None:
                self.best = self._restore_best()

    def elapsed(self) -> float:
        return time.monotonic() - self.origin

    def next(self) -> str | None:
        done = {c.strategy for c in self.tried}
        return next((s for s in self.order if s not in done), None)

    def run_next(self, strategy: str) -> None:
        """Plan `strategy` in its share of the time left and run it, or skip it with the reason; when it does not
        fit its share, the cheapest candidate left that can finish one epoch runs in all the time left."""
        index = self.order.index(strategy)
        left = self.end - time.monotonic()
        share = left * (FIRST_SHARE if index < self.rule_count - 1 else 1.0)
        size, epochs, note = self.fit(strategy, share)
        deadline = time.monotonic() + share
        if not size:
            strategy, size, epochs, fallback = self._cheapest(left)
            if size:
                note, deadline = fallback, self.end
        if index >= self.rule_count:
            note = "; ".join(filter(None, ["after the rule's candidates, in the time they left", note]))
        self.replan(strategy, "start", f"{strategy} starts: {left:.0f} s left")
        if not size:
            self.finish(Candidate(strategy, 0, note=note))
            log.info("auto: %s skipped: %s", strategy, note)
            return
        self.attempt(strategy, size, epochs, deadline, note)

    def fit(self, strategy: str, seconds: float) -> tuple[int, int, str]:
        return fit(self.costs, strategy, seconds, self.prepare_seconds, self.p.cfg.train.epochs)

    def _cheapest(self, left: float) -> tuple[str, int, int, str]:
        """Of the candidates not yet run, the one whose epoch costs least that can finish one epoch in `left`
        seconds: (strategy, size, epochs, note), or the first one with (0, 0, why)."""
        done = {c.strategy for c in self.tried}
        waiting = [s for s in self.order if s not in done]
        fits = sorted((self.costs.epoch(s, self.costs.native)[0], s, self.fit(s, left)) for s in waiting)
        for _, strategy, (size, epochs, note) in fits:
            if size:
                return strategy, size, epochs, ("no candidate fits its share; the cheapest that can finish an "
                                                 f"epoch runs in all the time left ({left:.0f} s), stopped by the "
                                                 "deadline" + (f"; {note}" if note else ""))
        smallest = sizes(self.costs.native)[-1]
        cost = {s: self.costs.setup_seconds(s, smallest, self.prepare_seconds) + self.costs.epoch(s, smallest)[0]
                for s in waiting}
        strategy = min(waiting, key=cost.__getitem__)
        if cost[strategy] <= TRY_FACTOR * left:
            return strategy, smallest, 1, (f"no candidate fits by the estimate (one epoch of {strategy} at {smallest} "
                                           f"px, its setup included: {cost[strategy]:.0f} s; {left:.0f} s left); "
                                           "it runs anyway, stopped by the deadline: on a busy machine the "
                                           "estimate is often several times too high")
        return waiting[0], 0, 0, self.fit(waiting[0], left)[2]

    def continue_improving(self) -> None:
        """When every candidate has run and time is left (the last one stopped early by itself): the best on
        validation of those whose last epoch was their best (still improving when their time ran out) goes on
        from its saved state for the epochs that fit at its measured pace, its cosine schedule stretched; once
        per run, and kept only if it then beats the best on validation."""
        if any(c.note.startswith(CONTINUED) for c in self.tried):
            return
        most = self.p.cfg.train.epochs
        improving = [c for c in self.tried if get_strategy(c.strategy).fine_tunes and c.image_size
                     and c.epochs_run < most and c.best_epoch == c.epochs_run
                     and self.keeper.kept(c.strategy, c.image_size)]
        if not improving:
            return
        cand = improving[0]
        for other in improving[1:]:
            cand = other if _better(other, cand, self.p.cfg) else cand
        left = self.end - time.monotonic()
        epoch = self.costs.epoch(cand.strategy, cand.image_size)[0]
        more = int(left // epoch) if epoch > 0 else 0
        if more < 1:
            log.info("auto: %.0f s left, less than an epoch of %s (%.0f s): not continued", left, cand.strategy, epoch)
            return
        self.replan(cand.strategy, "continue", f"{cand.strategy} continues: {left:.0f} s left")
        self.attempt(cand.strategy, cand.image_size, min(most, cand.epochs_run + more), self.end,
                     f"{CONTINUED} its epoch {cand.epochs_run} (its best: still improving) in the {left:.0f} s left",
                     resume=True)

    def resume_current(self) -> None:
        """The candidate a kill interrupted, with its plan (size, epochs, deadline), from its last epoch."""
        cur = self.state.current
        log.info("auto: resuming %s at %d px after epoch %d", cur["strategy"], cur["image_size"], cur.get("epoch", 0))
        self.attempt(cur["strategy"], cur["image_size"], cur["epochs"], self.origin + cur["until"], cur["note"],
                     resume=True)

    def attempt(self, strategy: str, size: int, epochs: int, deadline: float, note: str,
                resume: bool = False) -> None:
        """One candidate trained (at its size: `Prepared.at_size`) and its validation score kept."""
        start = time.monotonic()
        self.state.current = {"strategy": strategy, "image_size": size, "epochs": epochs, "note": note,
                              "until": round(deadline - self.origin, 3), "epoch": 0}
        self.save()
        cand_p = self._prepared_for(strategy, size, epochs, resume).with_control(deadline=deadline)
        seed_everything(self.p.cfg.train.seed)
        model = build_classifier(cand_p.cfg.model, 1 if self.p.binary else len(self.p.splits.classes),
                                 self.p.in_chans, self.p.weights).to(self.p.device)  # every candidate transfers
        log.info("auto: trying %s at %d px, up to %d epochs, %.0f s left for it", strategy, size, epochs,
                 deadline - start)
        hook = EpochClock(self, cand_p)
        result = self.train_fn(cand_p, model, self.progress, [hook])
        row = result.best
        cand = Candidate(strategy, size, epochs, len(result.history), result.best_epoch, val_auc=float(row["val_auc"]),
                         val_loss=float(row["val_loss"]), seconds=time.monotonic() - start, note=note)
        log.info("auto: %s val AUC %.4f, val loss %.4f (best epoch %d of %d) in %.0f s", strategy, cand.val_auc,
                 cand.val_loss, cand.best_epoch, cand.epochs_run, cand.seconds)
        hook.measure_candidate(result.history, cand.seconds)
        outcome = Outcome(cand_p, model, result, None)
        if self.best is None or _better(cand, self.best[1], self.p.cfg):
            self.best = (outcome, cand)  # the other candidates' models are let go
            self.keeper.save_best(dataclasses.asdict(cand), model, result)
            self.state.best = len(self.tried)
        self.finish(cand)
        del outcome, model
        release_memory()

    def finish(self, cand: Candidate) -> None:
        """A candidate done: recorded; its per-epoch state let go, unless its last epoch was its best (it may be
        continued: `continue_improving`)."""
        self.tried.append(cand)
        self.state.tried.append(dataclasses.asdict(cand))
        self.state.current = None
        self.save()
        if cand.image_size and cand.best_epoch != cand.epochs_run:
            self.keeper.finished(cand.strategy, cand.image_size)

    def save(self) -> None:
        self.state.elapsed = self.elapsed()
        self.state.costs = {"step": self.costs.step, "per_image": self.costs.per_image, "setup": self.costs.setup}
        self.keeper.save(self.state)

    def replan(self, candidate: str, epoch: int | str, reason: str) -> None:
        """The plans of the candidates still to run, from the costs measured so far, recorded."""
        done = {c.strategy for c in self.tried} | {candidate}
        waiting = [s for s in self.order if s not in done]
        left = self.end - time.monotonic()
        if self.state.current and self.state.current["strategy"] == candidate:
            cur = self.state.current  # the candidate in progress ends at its deadline (or sooner: it may stop early)
            left = self.end - (self.origin + cur["until"])
        plans = {}
        for s in waiting:
            share = max(left, 0.0) * (FIRST_SHARE if self.order.index(s) < self.rule_count - 1 else 1.0)
            size, epochs, note = self.fit(s, share)
            plans[s] = {"image_size": size, "epochs": epochs, **({"note": note} if note else {})}
            left -= share if size else 0.0
        measured = self.costs.per_image.get(candidate)
        self.state.replans.append({"at_seconds": round(self.elapsed(), 1), "candidate": candidate, "epoch": epoch,
                                   "measured_s_per_image": measured[0] if measured else None,
                                   "measured_at_size": measured[1] if measured else None,
                                   "plan": plans, "reason": reason})
        self.save()

    def _prepared_for(self, strategy: str, size: int, epochs: int, resume: bool) -> Prepared:
        """The run's Prepared with the candidate's config and its own state file: fine-tuning is LP-FT at batch
        <= FT_BATCH; another size is another decoded store over the same splits (`Prepared.at_size`)."""
        p, tc = self.p, self.p.cfg.train
        train = dataclasses.replace(tc, epochs=epochs)
        if get_strategy(strategy).fine_tunes:
            train = dataclasses.replace(train, head_init="probe", batch_size=min(tc.batch_size, FT_BATCH))
        data = dataclasses.replace(p.cfg.data, image_size=size)
        cfg = dataclasses.replace(p.cfg, data=data, train=train,
                                  model=dataclasses.replace(p.cfg.model, strategy=strategy))
        cand = dataclasses.replace(p, cfg=cfg) if size == p.size else p.at_size(size, cfg, self.progress)
        state = self.keeper.state(strategy, size)
        return cand.with_control(state_path=state, resume=resume and state is not None and state.is_file())

    def _restore_best(self) -> tuple[Outcome, Candidate]:
        record, weights, result = self.keeper.load_best()
        cand = _candidate(record)
        cand_p = self._prepared_for(cand.strategy, cand.image_size, cand.epochs, resume=False)
        model = build_classifier(cand_p.cfg.model, 1 if self.p.binary else len(self.p.splits.classes),
                                 self.p.in_chans, "none").to(self.p.device)
        model.load_state_dict(weights)
        return Outcome(cand_p.with_control(state_path=None), model, result, None), cand

    def outcome(self) -> Outcome:
        outcome, chosen = self.best
        outcome.p = outcome.p.with_control(state_path=None, resume=False)
        outcome.record = _record(self.p, self.tried, chosen, self.state)
        log.info("auto: chose %s (%s)", chosen.strategy, outcome.record.reason)
        return outcome


def _candidate(record: dict) -> Candidate:
    """A candidate's record read back (JSON writes an undefined score, NaN, as null)."""
    return Candidate(**{k: math.nan if v is None else v for k, v in record.items()})


def _better(c: Candidate, best: Candidate, cfg: RunConfig) -> bool:
    """`c` beats `best` on validation (`beats`)."""
    return beats({"auc": c.val_auc, "loss": c.val_loss}, {"auc": best.val_auc, "loss": best.val_loss},
                 cfg.train.monitor)


def _fit(p: Prepared, strategy: str, seconds: float, prepare_seconds: float, step: float) -> tuple[int, int, str]:
    """`plan.fit` for `p` from one timed full step (`step` seconds at the run's size)."""
    return fit(Costs.of(p, step), strategy, seconds, prepare_seconds, p.cfg.train.epochs)


def _record(p: Prepared, tried: list[Candidate], chosen: Candidate, state: Progress) -> AutoRecord:
    ran = [c for c in tried if c.image_size]
    reason = (f"best validation {p.cfg.train.monitor} of {len(ran)} candidates tried (AUCs within {AUC_TIE} tie, the "
              "lower loss wins): " + ", ".join(f"{c.strategy} AUC {c.val_auc:.4f} loss {c.val_loss:.4f}" for c in ran)
              + "; test was not looked at")
    return AutoRecord(budget_seconds=run_budget(p.cfg), train_images=len(p.splits.refs["train"]),
                      similarity={"linear_probe_val_auc": tried[0].val_auc, "close_from": CLOSE}, few_below=FEW,
                      rule=state.rule, candidates=[dataclasses.asdict(c) for c in tried], chosen=chosen.strategy,
                      reason=reason, replans=state.replans, resumed=state.resumed, threads=state.threads,
                      elapsed_seconds=round(state.elapsed, 1))
