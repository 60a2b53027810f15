"""The fit loop's state record and its hooks: a hook sees the state after each epoch and can stop training;
the resume file holds the state, and a file written before the record (a plain dict) still resumes."""

from __future__ import annotations

import math

import pytest
import torch

from medtl.core.config import TrainConfig
from medtl.training.fitstate import SAVED, FitPlan, FitState, calling
from medtl.training.loop import fit, make_loss
from medtl.training.resume import load_state, rng_state, save_state


def _data(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(32, 4, generator=g)
    y = (x[:, 0] > 0).long()
    return [(x[i:i + 8], y[i:i + 8]) for i in range(0, 32, 8)]


def _plan(epochs: int, **kw) -> FitPlan:
    cfg = TrainConfig(epochs=epochs, patience=100, optimizer="sgd", lr=0.1, schedule="none")
    return FitPlan(cfg, make_loss(True, None), torch.device("cpu"), ["a", "b"], **kw)


def test_a_hook_sees_each_epoch_and_can_stop_training():
    torch.manual_seed(0)
    seen, called = [], []

    def stop_at_two(state: FitState) -> None:
        seen.append((state.epoch, len(state.history), state.best_epoch >= 1, "auc" in state.val))
        state.stopped = state.epoch == 2
    batches = _data()
    state = fit(torch.nn.Linear(4, 1), batches, batches, lambda x: x, _plan(6),
                [calling(lambda epoch, val: called.append((epoch, val["auc"]))), stop_at_two], progress=False)
    assert seen == [(1, 1, True, True), (2, 2, True, True)]  # stopped after epoch 2 of 6
    assert [e for e, _ in called] == [1, 2] and all(0 <= auc <= 1 for _, auc in called)  # on_epoch as before
    assert state.stopped and state.epoch == 2 and [r["epoch"] for r in state.history] == [1, 2]


def test_an_epoch_hook_that_raises_stops_before_the_state_is_saved(tmp_path):
    class Pruned(Exception):
        pass

    def prune(epoch, val):
        if epoch == 2:
            raise Pruned
    batches, path = _data(), tmp_path / "state.pt"
    with pytest.raises(Pruned):
        fit(torch.nn.Linear(4, 1), batches, batches, lambda x: x, _plan(4, state_path=path), [calling(prune)],
            progress=False)
    assert load_state(path)["fit"]["epoch"] == 1  # epoch 2 was not saved: the hook stopped it first


def test_the_state_file_holds_the_record_and_an_old_dict_still_resumes(tmp_path):
    batches, path = _data(), tmp_path / "state.pt"
    torch.manual_seed(0)
    whole = fit(torch.nn.Linear(4, 1), batches, batches, lambda x: x, _plan(4), progress=False)
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    first = fit(model, batches, batches, lambda x: x, _plan(2, state_path=path), progress=False)
    saved = load_state(path)
    assert tuple(saved["fit"]) == SAVED and saved["fit"]["epoch"] == 2
    assert FitState.from_dict(saved["fit"]).history == first.history
    # the dict a run saved before FitState existed: the same keys, `best` a list
    old = {"epoch": 2, "best": list(first.best), "best_state": first.best_state, "best_epoch": first.best_epoch,
           "history": first.history, "stopped": False}
    model.load_state_dict(load_state(path)["model"])
    save_state(path, {**saved, "fit": old, "rng": rng_state(), "rng_ranks": [saved["rng"]]})
    resumed = fit(torch.nn.Linear(4, 1), batches, batches, lambda x: x, _plan(4, state_path=path, resume=True),
                  progress=False)
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3, 4]
    assert [r["train_loss"] for r in resumed.history] == pytest.approx([r["train_loss"] for r in whole.history])
    assert resumed.best_epoch == whole.best_epoch and math.isfinite(resumed.best[0])


def test_early_stopping_is_a_hook_that_marks_the_saved_state(tmp_path):
    batches, path = _data(), tmp_path / "state.pt"
    cfg = TrainConfig(epochs=20, patience=1, optimizer="sgd", lr=1e-30, schedule="none")  # steps too small to move a weight
    plan = FitPlan(cfg, make_loss(True, None), torch.device("cpu"), ["a", "b"], state_path=path)
    state = fit(torch.nn.Linear(4, 1), batches, batches, lambda x: x, plan, progress=False)
    assert state.epoch == 2 and state.best_epoch == 1 and state.stopped
    assert load_state(path)["fit"]["stopped"] is True  # a resumed run trains no further


def test_a_hook_can_stretch_the_planned_epochs_the_cosine_schedule_follows_and_a_resume_keeps_it(tmp_path):
    """auto fits a candidate to its deadline: a hook that raises `planned` after epoch 1 gets more epochs, the
    cosine schedule anneals over the new length (not the old one), and the saved state holds it."""
    batches, path = _data(), tmp_path / "state.pt"
    cfg = TrainConfig(epochs=2, patience=100, optimizer="sgd", lr=0.1, schedule="cosine")

    def longer(state: FitState) -> None:
        if state.epoch == 1:
            state.planned = 5
    torch.manual_seed(0)
    plan = FitPlan(cfg, make_loss(True, None), torch.device("cpu"), ["a", "b"], state_path=path)
    state = fit(torch.nn.Linear(4, 1), batches, batches, lambda x: x, plan, [longer], progress=False)
    assert [r["epoch"] for r in state.history] == [1, 2, 3, 4, 5] and state.planned == 5
    curve = [0.1 * (1 + math.cos(math.pi * e / 5)) / 2 for e in range(5)]  # epoch 1 ran at the base rate
    assert [r["lr"] for r in state.history] == pytest.approx(curve)
    saved = load_state(path)
    assert saved["fit"]["planned"] == 5 and saved["scheduler"]["T_max"] == 5


def test_a_hook_can_shorten_the_planned_epochs():
    batches = _data()

    def shorter(state: FitState) -> None:
        state.planned = min(state.planned, 3)
    plan = FitPlan(TrainConfig(epochs=8, patience=100, optimizer="sgd", lr=0.1, schedule="cosine"),
                   make_loss(True, None), torch.device("cpu"), ["a", "b"])
    state = fit(torch.nn.Linear(4, 1), batches, batches, lambda x: x, plan, [shorter], progress=False)
    assert [r["epoch"] for r in state.history] == [1, 2, 3] and not state.stopped
    assert state.history[-1]["lr"] == pytest.approx(0.1 * (1 + math.cos(math.pi * 2 / 3)) / 2)


def test_a_fit_resumed_with_more_epochs_continues_to_them_on_a_stretched_schedule(tmp_path):
    """auto continues a candidate that was still improving: its saved state, resumed with more epochs, trains
    on from where it stopped, the cosine schedule stretched to the new length (not restarted, not ended)."""
    batches, path = _data(), tmp_path / "state.pt"

    def plan(epochs: int, resume: bool) -> FitPlan:
        cfg = TrainConfig(epochs=epochs, patience=100, optimizer="sgd", lr=0.1, schedule="cosine")
        return FitPlan(cfg, make_loss(True, None), torch.device("cpu"), ["a", "b"], state_path=path, resume=resume)
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    fit(model, batches, batches, lambda x: x, plan(3, False), progress=False)
    state = fit(model, batches, batches, lambda x: x, plan(5, True), progress=False)
    assert [r["epoch"] for r in state.history] == [1, 2, 3, 4, 5] and state.planned == 5
    lrs = [r["lr"] for r in state.history]
    assert lrs[:3] == pytest.approx([0.1 * (1 + math.cos(math.pi * e / 3)) / 2 for e in range(3)])
    assert lrs[3:] == pytest.approx([0.1 * (1 + math.cos(math.pi * e / 5)) / 2 for e in (3, 4)])
    assert load_state(path)["scheduler"]["T_max"] == 5
