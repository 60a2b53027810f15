"""strategy=auto resumes: killed during its second candidate, `medtl train --resume RUN` keeps the finished
candidates (scores and weights), continues the one in progress from its last epoch within the budget that was
left, and chooses among all candidates. And the adaptive plan: re-plans from measured epochs, the cheapest
candidate when nothing fits its share, data prepared once per run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from medtl.core.config import RunConfig, apply_overrides
from medtl.core.runfolder import RunFolder
from medtl.training.auto import search as auto
from medtl.training.fitstate import FitState
from medtl.training.prepare import prepare
from medtl.training.results import SplitScores, TrainResult

AUTO = ["--backbone", "efficientnet_lite0", "--weights", "package", "--image-size", "32", "--epochs", "200",
        "--set", "train.patience=200", "--set", "train.batch_size=8", "--set", "runtime.engine=torch",
        "--set", "eval.bootstrap=50", "--set", "runtime.threads=1"]


def _progress(folder: RunFolder) -> dict | None:
    try:
        return json.loads(folder.auto_progress.read_text())
    except (OSError, ValueError):
        return None


@pytest.mark.slow
def test_an_auto_run_killed_in_its_second_candidate_resumes_and_chooses_among_all(image_tree, tmp_path):
    env = {**os.environ, "MEDTL_CACHE": str(tmp_path / "cache")}
    folder = RunFolder(tmp_path / "runs" / "a")
    cmd = [sys.executable, "-m", "medtl", "train", str(image_tree), *AUTO, "--budget", "75s",
           "--output-dir", str(folder.path.parent), "--name", "a", "-q"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    deadline, before = time.monotonic() + 600, None
    while time.monotonic() < deadline and proc.poll() is None:
        state = _progress(folder)
        current = (state or {}).get("current") or {}
        if len(state["tried"] if state else []) == 1 and current.get("epoch", 0) >= 2:
            before = state  # the second candidate has finished two epochs: kill it in its third
            break
        time.sleep(0.02)
    assert before is not None, proc.communicate()[1][-3000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    second = before["current"]["strategy"]
    assert before["tried"][0]["strategy"] == "linear" and second != "linear"
    assert folder.candidate_state(second, before["current"]["image_size"]).is_file()  # its epochs are kept
    assert folder.auto_best.is_file() and not folder.finished

    done = subprocess.run([sys.executable, "-m", "medtl", "train", "--resume", str(folder), "-q"],
                          capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads(folder.auto.read_text())
    names = [c["strategy"] for c in record["candidates"]]
    assert names[0] == "linear" and sorted(names) == ["full", "linear", "partial"]  # every candidate, once
    assert record["candidates"][0] == before["tried"][0]  # the linear probe's record from before the kill
    assert record["chosen"] in [c["strategy"] for c in record["candidates"] if c["image_size"]]
    assert record["resumed"] == [{"at_seconds": pytest.approx(before["elapsed"], abs=30), "kept": ["linear"],
                                  "in_progress": second}]
    resumed = next(c for c in record["candidates"] if c["strategy"] == second)
    log = folder.log.read_text()
    assert f"resuming from {folder.candidate_state(second, resumed['image_size'])} after epoch" in log
    assert resumed["epochs_run"] > before["current"]["epoch"] - 1  # it went on from its epochs, not from epoch 1
    assert record["elapsed_seconds"] <= 75 + 60  # the budget left, not a new one (plus an epoch and the scoring)
    assert record["replans"] and all({"at_seconds", "candidate", "measured_s_per_image", "plan", "reason"}
                                     <= set(r) for r in record["replans"])
    assert json.loads(folder.metrics.read_text())["auto"] == record
    left = sorted(p.name for p in folder.path.iterdir() if p.name.startswith(("state", "auto-")) or
                  p.name.endswith((".tmp", ".lock")))
    assert left == []  # the candidates' states and auto's progress go once the run is complete


def _cfg(root, out, **kw):
    base = {"data.path": str(root), "data.image_size": 32, "model.backbone": "efficientnet_lite0",
            "model.weights": "package", "model.strategy": "auto", "train.epochs": 8, "train.batch_size": 8,
            "out": str(out), "runtime.threads": 2, "runtime.engine": "torch", "eval.tta": "none"}
    return apply_overrides(RunConfig(), {**base, **kw})


def _fake(seconds: dict, seen: list):
    """A training function whose epochs take `seconds[strategy]` each (as the history and the hook say)."""
    def train(cp, model, progress, hooks=()):
        s = cp.cfg.model.strategy
        seen.append((s, cp.size, cp.cfg.train.epochs))
        state = FitState(planned=cp.cfg.train.epochs)
        while state.epoch < state.planned and not state.stopped:
            state.epoch += 1
            state.history.append({"epoch": state.epoch, "val_auc": 0.8, "val_loss": 0.5, "seconds": seconds[s]})
            for hook in hooks:
                hook(state)
        y = np.array([0, 1] * 4)
        return TrainResult(state.history, len(state.history), {"val": SplitScores(y * 0.8 + 0.1, y)})
    return train


def test_plans_follow_the_measured_epochs_not_the_timed_step(image_tree, cache_dir, tmp_path, monkeypatch):
    """The timed step says fine-tuning is slow (40 s a step), the measured epochs say it is fast: the second
    fine-tuning candidate is planned from the first one's measured epochs, and every re-plan is recorded."""
    p = prepare(_cfg(image_tree, tmp_path / "runs", **{"data.image_size": 160}), progress=False)
    p = p.with_control(deadline=time.monotonic() + 200)
    monkeypatch.setattr(auto, "_step_seconds", lambda p: 40.0)  # one 32-image step: 40 s at 160 px
    seen = []
    outcome = auto.choose(p, _fake({"linear": 0.0, "partial": 0.01, "full": 0.01}, seen), False, 1.0)
    fine = [s for s in seen if s[0] != "linear"]
    assert fine[0][1] < 160  # the timed step: the first candidate had to shrink
    assert fine[1][1] == 160 and fine[1][2] == 8  # measured: the second fits every epoch at the full size
    replans = outcome.record["replans"]
    measured = [r for r in replans if r["candidate"] == fine[0][0] and r["measured_s_per_image"]]
    assert measured and measured[-1]["plan"][fine[1][0]]["image_size"] == 160
    assert all(r["reason"] for r in replans)


def test_when_nothing_fits_its_share_the_cheapest_candidate_runs_in_all_the_time_left(image_tree, cache_dir,
                                                                                      tmp_path, monkeypatch):
    """A busy machine: not one epoch of any candidate fits its share, but one of full (partial's cached
    activations cost more than the epoch they save here) fits in all the time left: it runs, stopped by the
    deadline, instead of every fine-tuning candidate being skipped; its measured epoch then re-plans partial,
    which fits after all."""
    p = prepare(_cfg(image_tree, tmp_path / "runs", **{"data.image_size": 96}), progress=False)
    p = p.with_control(deadline=time.monotonic() + auto.RESERVE_S + 60)
    # ~41 training images, ~23 evaluated: a full epoch ~43 s, over full's share (0.65 x ~59 s), within ~59 s
    monkeypatch.setattr(auto, "_step_seconds", lambda p: 28.0)
    monkeypatch.setattr(auto, "plan", lambda n, sim: (["full", "partial"], "many (test)"))
    seen = []
    outcome = auto.choose(p, _fake({"linear": 0.0, "partial": 0.01, "full": 0.01}, seen), False, 1.0)
    ran = [c for c in outcome.record["candidates"] if c["image_size"] and c["strategy"] != "linear"]
    assert ran[0]["strategy"] == "full" and ran[0]["epochs"] == 1, outcome.record["candidates"]
    assert "the cheapest that can finish an epoch runs in all the time left" in ran[0]["note"]
    assert [c["strategy"] for c in ran[1:]] == ["partial"] and ran[1]["epochs"] == 8


def test_another_size_reads_no_image_again_and_keeps_the_splits(image_tree, cache_dir, tmp_path, monkeypatch):
    """`Prepared.at_size`: the same splits, keys and audit; only a new store, decoded from the bytes read once."""
    from medtl.data import images
    p = prepare(_cfg(image_tree, tmp_path / "runs"), progress=False)
    reads, opened = [], []
    real_read, real_open = images.Path.read_bytes, images.open_checked
    monkeypatch.setattr(images.Path, "read_bytes", lambda self: reads.append(self) or real_read(self))
    monkeypatch.setattr(images, "open_checked", lambda src, *a: opened.append(src) or real_open(src, *a))
    other = p.at_size(24, p.cfg)
    assert reads == [] and len(opened) == 64  # every image decoded again, from the bytes kept from its first read
    assert not [src for src in opened if isinstance(src, str)]
    assert other.size == 24 and other.store.array.shape[-1] == 24 and other.splits is p.splits
    assert other.store.key != p.store.key and other.audit_notes is p.audit_notes and other.weights == p.weights


def test_a_candidate_faster_than_planned_is_stretched_to_its_deadline(image_tree, cache_dir, tmp_path, monkeypatch):
    """The timed step says fine-tuning is slow; the first candidate's measured epochs are fast: after its first
    epoch it is given the epochs that fit its own deadline (up to train.epochs), and the re-plan says so."""
    p = prepare(_cfg(image_tree, tmp_path / "runs", **{"data.image_size": 160}), progress=False)
    p = p.with_control(deadline=time.monotonic() + 200)
    monkeypatch.setattr(auto, "_step_seconds", lambda p: 40.0)
    seen = []
    outcome = auto.choose(p, _fake({"linear": 0.0, "partial": 0.01, "full": 0.01}, seen), False, 1.0)
    first = [c for c in outcome.record["candidates"] if c["strategy"] != "linear"][0]
    assert first["epochs"] < 8 and first["epochs_run"] == 8, first  # planned from the step, run to train.epochs
    assert any(f"its epochs {first['epochs']} -> 8" in r["reason"] for r in outcome.record["replans"])


def test_when_no_candidate_fits_by_the_estimate_the_cheapest_still_runs_to_the_deadline(image_tree, cache_dir,
                                                                                      tmp_path, monkeypatch):
    """A busy machine: the timed step says not one epoch fits in all the time left (but within TRY_FACTOR of
    it): the cheapest candidate still runs at the smallest size, stopped by the deadline, instead of none."""
    p = prepare(_cfg(image_tree, tmp_path / "runs", **{"data.image_size": 96}), progress=False)
    p = p.with_control(deadline=time.monotonic() + auto.RESERVE_S + 60)
    monkeypatch.setattr(auto, "_step_seconds", lambda p: 80.0)  # an epoch of full: ~2 minutes by the estimate
    monkeypatch.setattr(auto, "plan", lambda n, sim: (["full", "partial"], "many (test)"))
    outcome = auto.choose(p, _fake({"linear": 0.0, "partial": 0.01, "full": 0.01}, []), False, 1.0)
    ran = [c for c in outcome.record["candidates"] if c["image_size"] and c["strategy"] != "linear"]
    assert ran and ran[0]["image_size"] == 96 and ran[0]["epochs"] == 1, outcome.record["candidates"]
    assert "it runs anyway, stopped by the deadline" in ran[0]["note"]


def test_a_busy_machine_trains_with_fewer_threads_when_they_are_quicker(monkeypatch):
    import torch

    from medtl.training import runtime
    before = torch.get_num_threads()
    monkeypatch.setattr(runtime.CpuShare, "busy", lambda self: 1.5)  # other programs kept 1.5 cores busy
    try:
        torch.set_num_threads(2)
        seconds, record = runtime.quicker_threads(lambda: {2: 14.0, 1: 3.0}[torch.get_num_threads()])
        assert (seconds, record["chosen"], torch.get_num_threads()) == (3.0, 1, 1)
        assert record["timed"] == {"2": 14.0, "1": 3.0} and record["other_cores_busy"] == 1.5
        torch.set_num_threads(2)
        seconds, record = runtime.quicker_threads(lambda: {2: 1.0, 1: 1.8}[torch.get_num_threads()])
        assert (seconds, record["chosen"], torch.get_num_threads()) == (1.0, 2, 2)  # more threads were quicker
        monkeypatch.setattr(runtime.CpuShare, "busy", lambda self: 0.1)  # quiet: timed once
        calls = []
        runtime.quicker_threads(lambda: calls.append(1) or 1.0)
        assert len(calls) == 1
    finally:
        torch.set_num_threads(before)


def test_a_candidates_epochs_follow_its_pace_without_swinging():
    """Seen on Kermany: full planned 5 epochs of ~107 s with 448 s left after its first: 5 still fit at that
    pace, so the plan stays (a 10 % margin alone would have said 4, then 5 again, swinging the schedule); it
    shrinks only when the planned epochs do not fit at the pace measured, and grows when more fit with margin."""
    from types import SimpleNamespace
    from medtl.training.auto.clock import EpochClock
    fitted = EpochClock.fitted
    clock = SimpleNamespace(most=20)
    assert fitted(clock, FitState(epoch=1, planned=5), 107.4, 448.0) == 5
    assert fitted(clock, FitState(epoch=1, planned=5), 107.4, 300.0) == 3
    assert fitted(clock, FitState(epoch=1, planned=2), 100.0, 1000.0) == 10  # 1 + 9 at 110 s each
    assert fitted(clock, FitState(epoch=1, planned=2), 10.0, 1000.0) == 20  # at most train.epochs


def test_the_cores_other_programs_keep_busy_are_measured():
    """A process spinning on one core beside this one adds about one busy core to what other programs already
    keep busy (up to the cores there are); this process's own work does not count. Measured against the
    machine's own background first, so that it holds on a loaded machine (CI's, or a load beside pytest)."""
    from medtl.training import runtime
    if runtime._machine_seconds() is None:
        pytest.skip("no /proc/stat here: the load average stands in")
    cpus = runtime._cpus()
    share = runtime.CpuShare()
    time.sleep(1.0)
    before = share.busy()  # the background: nothing of this test's running yet
    spin = "import time\nend = time.time() + 3\nwhile time.time() < end: pass"
    spinner = subprocess.Popen([sys.executable, "-c", spin])
    try:
        time.sleep(0.3)
        share = runtime.CpuShare()
        time.sleep(1.5)
        expected = min(before + 1.0, cpus)  # a full machine stays full: the spinner takes others' time
        assert expected - 0.45 <= share.busy() <= expected + 0.45, (share.busy(), before, cpus)
    finally:
        spinner.wait(timeout=30)
    share = runtime.CpuShare()
    end = time.monotonic() + 1.0
    while time.monotonic() < end:  # this process busy
        pass
    assert share.busy() < min(before, cpus - 1.0) + 0.5, (share.busy(), before)


def test_time_left_when_the_last_candidate_stops_early_continues_the_one_still_improving(image_tree, cache_dir,
                                                                                      tmp_path, monkeypatch):
    """full runs out of its share while still improving; partial, the last candidate, ends with time left: full
    goes on from its saved state for the epochs that fit in that time, and the choice is among all. (A fake
    clock: each fake epoch advances it by the seconds it says it took.)"""
    from types import SimpleNamespace
    p = prepare(_cfg(image_tree, tmp_path / "runs", **{"data.image_size": 96}), progress=False)
    folder = tmp_path / "runs" / "r"
    folder.mkdir(parents=True)
    clock = [1000.0]
    from medtl.training.auto import clock as auto_clock
    for module in (auto, auto_clock):
        monkeypatch.setattr(module, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    p = p.with_control(state_path=folder / "state.pt", deadline=clock[0] + 300)
    monkeypatch.setattr(auto, "_step_seconds", lambda p: 1.0)
    monkeypatch.setattr(auto, "plan", lambda n, sim: (["full", "partial"], "many (test)"))
    seen, saved = [], {}

    def train(cp, model, progress, hooks=()):
        s = cp.cfg.model.strategy
        seen.append((s, cp.cfg.train.epochs, cp.control.resume))
        state = FitState(planned=cp.cfg.train.epochs)
        if cp.control.resume:  # where the saved state left it
            state = FitState(saved[s].epoch, planned=cp.cfg.train.epochs, history=list(saved[s].history))
        saved[s] = state
        while state.epoch < state.planned and not state.stopped:
            state.epoch += 1
            seconds = 50.0 if s == "full" else 0.01
            clock[0] += seconds
            state.history.append({"epoch": state.epoch, "val_auc": 0.8 + state.epoch / 100 if s == "full" else 0.8,
                                  "val_loss": 0.5, "seconds": seconds})
            for hook in hooks:
                hook(state)
        if cp.control.state_path is not None:
            cp.control.state_path.write_bytes(b"state")  # what fit's saving hook leaves
        y = np.array([0, 1] * 4)
        return TrainResult(state.history, len(state.history), {"val": SplitScores(y * 0.8 + 0.1, y)})
    outcome = auto.choose(p, train, False, 1.0)
    full = [c for c in outcome.record["candidates"] if c["strategy"] == "full"]
    assert len(full) == 2 and full[0]["epochs_run"] == 3, outcome.record["candidates"]  # 3 of 50 s in its share
    assert seen[-1] == ("full", 5, True)  # continued from its state: 2 more epochs of 50 s fit in what is left
    assert full[1]["note"].startswith("continued from its epoch 3")
    assert outcome.record["chosen"] == "full" and full[1]["val_auc"] > full[0]["val_auc"]
    assert any(r["epoch"] == "continue" for r in outcome.record["replans"])


def test_auto_record_reads_back_and_reads_an_older_file(tmp_path):
    """Issue 35: auto.json has one reader (`AutoRecord.read`), which gives back what was written, reads a file an
    older medtl wrote (fewer keys), and refuses a damaged one in one line."""
    from medtl.core.errors import MedtlError
    from medtl.training.auto.record import ORDER, AutoRecord

    record = AutoRecord(chosen="full", candidates=[{"strategy": "linear"}, {"strategy": "full"}], reason="why",
                        budget_seconds=900.0, train_images=4471, rule="many images")
    path = tmp_path / "auto.json"
    record.write(path)
    assert list(json.loads(path.read_text())) == list(ORDER)
    assert AutoRecord.read(path) == record and record["chosen"] == "full"
    path.write_text(json.dumps({"chosen": "linear", "candidates": [], "reason": "old", "unknown_key": 1}))
    old = AutoRecord.read(path)
    assert old.chosen == "linear" and old.replans == [] and old.threads == {}
    assert AutoRecord.read(tmp_path / "none.json") is None  # a fixed strategy's run
    path.write_text("[1, 2]")
    with pytest.raises(MedtlError, match="not strategy auto's record"):
        AutoRecord.read(path)
