"""Faults during a run: Ctrl-C in an auto run, a killed run read back, the run folder deleted, memory exhausted,
and a split that lacks a class. One line (and the right exit code) each; the folder left complete or clearly
unfinished, with its lock released."""

from __future__ import annotations

import errno
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import medtl
from medtl import cli
from medtl.core import faults
from medtl.core.config import RunConfig, apply_overrides
from medtl.core.errors import Interrupted, MedtlError
from medtl.core.runfolder import RunFolder
from medtl.models.checkpoint import Checkpoint
from medtl.training.resume import load_state
from medtl.training.run import run
from helpers import cli_in_process, make_image, write_tree

AUTO = ["--backbone", "efficientnet_lite0", "--weights", "package", "--image-size", "32", "--epochs", "2",
        "--set", "train.batch_size=8", "--set", "runtime.engine=torch", "--set", "eval.bootstrap=50"]


def _cli(monkeypatch, capsys, *args) -> tuple[int, list[str], str]:
    """`medtl ARGS` in this process: (exit code, the `error:` lines, stdout)."""
    code, out, err = cli_in_process(monkeypatch, capsys, *args)
    return code, [line for line in err.splitlines() if line.startswith("error:")], out


def _cfg(data: Path, out: Path, name: str, **kw) -> RunConfig:
    base = {"data.path": str(data), "model.backbone": "resnet18", "model.weights": "none", "model.strategy": "full",
            "train.epochs": 3, "data.image_size": 32, "train.batch_size": 16, "train.patience": 10, "out": str(out),
            "name": name}
    return apply_overrides(RunConfig(), {**base, **kw})


def _leftovers(folder: Path) -> list[str]:
    """What a run must never leave: its lock, temporary files."""
    return sorted(p.name for p in folder.rglob("*") if p.name.endswith(".tmp") or p.name == "run.lock")


# --- D4: Ctrl-C in an auto run prints the command that continues it (--resume) ---------------------------------

@pytest.mark.slow
def test_ctrl_c_in_an_auto_run_prints_a_command_that_works(image_tree, tmp_path):
    env = {**os.environ, "MEDTL_CACHE": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "medtl", "train", str(image_tree), *AUTO, "--budget", "2m",
           "--output-dir", str(tmp_path / "runs"), "--name", "a"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    folder = RunFolder(tmp_path / "runs" / "a")
    deadline, mark = time.monotonic() + 300, "auto: linear val AUC"
    while time.monotonic() < deadline and not (folder.log.exists() and mark in folder.log.read_text()):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)  # linear has finished its epochs: partial and full are still to come
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    again = f"medtl train --resume {folder}"  # issue 25: an auto run resumes (training/auto/state.py)
    assert lines == [f"error: interrupted: the finished candidates and epochs are kept; continue with `{again}`"]
    assert "no epoch had finished" not in err
    assert not folder.finished and not folder.checkpoint.exists() and _leftovers(folder.path) == []
    # a program that reads the folder says the same, not "not a run folder"
    predicted = subprocess.run([sys.executable, "-m", "medtl", "predict", str(folder), str(image_tree)],
                               capture_output=True, text=True, env=env)
    assert predicted.returncode == 2
    assert predicted.stderr.splitlines() == [f"error: the run in {folder} did not finish (no checkpoint.pt); "
                                             f"continue it with `{again}`"]
    # following the printed command works: it continues the run, in the same folder, to the end
    printed = re.search(r"`(medtl train .*)`", lines[0]).group(1)
    done = subprocess.run([sys.executable, "-m", *shlex.split(printed), "-q"], capture_output=True, text=True,
                          env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    assert folder.finished and folder.checkpoint.is_file() and folder.auto.is_file()
    assert _leftovers(folder.path) == []


def test_resuming_an_auto_run_is_not_refused(image_tree, tmp_path):
    """Issue 25: an auto run resumes (tests/training/test_auto_resume.py kills one and resumes it); what auto cannot do
    is still refused before anything is written."""
    from medtl.training.initialize import check_early
    cfg = _cfg(image_tree, tmp_path / "runs", "a", **{"model.strategy": "auto", "model.weights": "package",
                                                       "model.backbone": "efficientnet_lite0"})
    check_early(cfg)  # no refusal
    with pytest.raises(MedtlError, match="strategy scratch"):
        check_early(_cfg(image_tree, tmp_path / "runs", "a", **{"model.strategy": "auto"}))
    assert not (tmp_path / "runs" / "a").exists()


# --- D18: a killed run read back says "did not finish" and how to continue it -------------------------------

@pytest.fixture(scope="module")
def killed_run(tmp_path_factory) -> tuple[RunFolder, Path]:
    """A run stopped during its second epoch: state.pt holds epoch 1, no checkpoint (what SIGKILL leaves, and
    what std::bad_alloc's abort leaves, less the lock file, which the next run takes over); and its data."""
    tmp = tmp_path_factory.mktemp("killed")
    data = write_tree(tmp / "data")

    def stop(epoch, val):
        if epoch == 2:
            raise KeyboardInterrupt
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDTL_CACHE", str(tmp / "cache"))
        with pytest.raises(Interrupted, match="the last finished epoch is kept"):
            run(_cfg(data, tmp / "runs", "k"), progress=False, on_epoch=stop)
    folder = RunFolder(tmp / "runs" / "k")
    assert folder.state.is_file() and folder.config.is_file() and not folder.checkpoint.exists()
    (folder.path / "run.lock").write_text("medtl pid 999999")  # as a killed process leaves it
    return folder, data


@pytest.fixture
def killed(killed_run, tmp_path, cache_dir) -> RunFolder:
    """A copy of the killed run, the test's own (--resume finds its config by the folder's own path)."""
    shutil.copytree(killed_run[0].path, tmp_path / "runs" / "k")
    return RunFolder(tmp_path / "runs" / "k")


@pytest.mark.parametrize("command", ["predict", "evaluate", "export", "explain", "serve"])
def test_a_killed_run_is_reported_as_unfinished(killed_run, monkeypatch, capsys, command):
    killed, data = killed_run
    args = {"predict": [data], "evaluate": [data], "explain": [data]}.get(command, [])
    code, lines, _ = _cli(monkeypatch, capsys, command, killed.path, *args)
    assert code == 2
    assert lines == [f"error: the run in {killed.path} did not finish (no checkpoint.pt); continue it with "
                     f"`medtl train --resume {killed.path}`"]
    with pytest.raises(MedtlError, match=re.escape(f"did not finish (no checkpoint.pt); continue it with "
                                                   f"`medtl train --resume {killed.path}`")):
        medtl.Run.load(killed.path)
    assert sorted(p.name for p in killed.path.iterdir()) == ["config.yaml", "run.lock", "state.pt", "train.log"]


@pytest.mark.slow
def test_following_the_message_on_a_killed_run_finishes_it(killed, monkeypatch, capsys):
    code, lines, out = _cli(monkeypatch, capsys, "train", "--resume", killed.path, "-q")
    assert (code, lines) == (0, []) and f"run folder: {killed.path}" in out
    assert killed.finished and not killed.state.exists() and medtl.Run.load(killed.path).metrics["epochs_run"] == 3


def test_a_folder_that_no_run_started_is_still_not_a_run_folder(tmp_path, monkeypatch, capsys):
    code, lines, _ = _cli(monkeypatch, capsys, "export", tmp_path)
    assert (code, lines) == (2, [f"error: {tmp_path / 'checkpoint.pt'} not found; pass a run folder written by "
                                 "`medtl train`"])


# --- D23: the run folder deleted while the run trains ---------------------------------------------------------

def test_the_run_folder_deleted_during_training_is_one_line(image_tree, tmp_path, cache_dir):
    folder = tmp_path / "runs" / "gone"

    def delete(epoch, val):
        if epoch == 1:
            shutil.rmtree(folder)
    with pytest.raises(MedtlError) as info:
        run(_cfg(image_tree, tmp_path / "runs", "gone"), progress=False, on_epoch=delete)
    assert str(info.value) == (f"the run folder {folder} was removed while training (FileNotFoundError); nothing "
                               "of the run is kept: start it again")
    assert not folder.exists()  # nothing recreated it half-way
    again = run(_cfg(image_tree, tmp_path / "runs", "gone", **{"train.epochs": 1}), progress=False)  # works again
    assert RunFolder(again).finished


# --- D24: memory exhausted under `ulimit -v` -------------------------------------------------------------------

def _limited(kib: int, args: list[str], env: dict) -> subprocess.CompletedProcess:
    line = shlex.join([sys.executable, "-m", "medtl", *args])
    return subprocess.run(["bash", "-c", f"ulimit -v {kib} && exec {line}"], capture_output=True, text=True,
                          env=env, timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize("kib, size", [(2_000_000, 32),  # torch's libraries cannot be mapped: at import
                                       (4_200_000, 224)])  # the libraries load; training's tensors do not fit
def test_memory_exhausted_is_one_line_and_leaves_an_unfinished_folder(image_tree, tmp_path, kib, size):
    env = {**os.environ, "MEDTL_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    folder = RunFolder(tmp_path / "runs" / "m")
    done = _limited(kib, ["train", str(image_tree), "--backbone", "resnet18", "--weights", "none", "--strategy",
                          "full", "--epochs", "2", "--image-size", str(size), "--set", "train.batch_size=16",
                          "--output-dir", str(folder.path.parent), "--name", "m", "-q"], env)
    if done.returncode == 0:
        pytest.skip(f"{kib} KiB were enough on this machine")
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and lines[0].startswith("error: out of memory") and "train.batch_size" in lines[0]
    assert f"{kib / 2**20:.1f} GiB (ulimit -v)" in lines[0], lines
    if folder.path.exists():  # training had started: unfinished, its lock released, nothing half-written
        assert f"the run in {folder.path} did not finish" in lines[0]
        assert not folder.finished and not folder.checkpoint.exists() and _leftovers(folder.path) == []
        predicted = subprocess.run([sys.executable, "-m", "medtl", "predict", str(folder), str(image_tree)],
                                   capture_output=True, text=True, env=env)
        assert predicted.returncode == 2 and "did not finish" in predicted.stderr


def test_a_memory_error_at_the_boundary_is_one_line(monkeypatch, capsys):
    def exhausted(*args, **kwargs):
        raise MemoryError
    monkeypatch.setattr(medtl.api, "audit", exhausted)
    code, lines, _ = _cli(monkeypatch, capsys, "audit", "anything")
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: out of memory (MemoryError); lower the "
                                                                 "batch size (train.batch_size")


@pytest.mark.parametrize("exc, limited, memory", [
    (ImportError("libtorch_cuda.so: failed to map segment from shared object"), False, True),
    (OSError(errno.ENOMEM, "Cannot allocate memory"), False, True),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory"), False, True),
    (RuntimeError("can't start new thread"), True, True),  # a thread's stack cannot be mapped under ulimit -v
    (RuntimeError("can't start new thread"), False, False),  # without a limit: something else
    (RuntimeError("could not create a primitive"), True, True),  # oneDNN's workspace
    (RuntimeError("unexpected pos 25918272 vs 25918168"), False, False),
    (ImportError("No module named 'x'"), False, False),
    (FileNotFoundError(errno.ENOENT, "No such file"), False, False),
])
def test_memory_exhausted_is_told_apart_from_other_failures(monkeypatch, exc, limited, memory):
    monkeypatch.setattr(faults, "address_limit", lambda: 4 * 2**30 if limited else None)
    assert faults.out_of_memory(exc) is memory


def test_an_exception_raised_while_memory_ran_out_counts_as_memory():
    try:
        try:
            raise MemoryError
        except MemoryError:  # torch.save's zip writer, cleaning up after the MemoryError, fails in turn
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 25918272 vs 25918168")
    except RuntimeError as exc:
        assert faults.out_of_memory(exc)


def test_memory_exhausted_while_loading_is_not_called_a_damaged_file(killed_run, monkeypatch):
    """Reading state.pt or checkpoint.pt with too little memory must not say "damaged: delete it / train again"."""
    def exhausted(*args, **kwargs):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 9437184 bytes")
    monkeypatch.setattr(torch, "load", exhausted)
    with pytest.raises(RuntimeError, match="can't allocate memory"):
        load_state(killed_run[0].state)
    with pytest.raises(RuntimeError, match="can't allocate memory"):
        Checkpoint.load(killed_run[0].state)  # any file: torch.load is where memory runs out
    assert faults.as_error(RuntimeError("can't allocate memory")).exit_code == 2


def test_other_failures_at_the_boundary_are_not_disguised(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("something else")
    monkeypatch.setattr(medtl.api, "audit", broken)
    monkeypatch.setattr(sys, "argv", ["medtl", "audit", "anything"])
    with pytest.raises(RuntimeError, match="something else"):
        cli.main()


# --- D6: a multiclass split that lacks a class ----------------------------------------------------------------

def test_a_test_split_without_one_class_prints_undefined(tmp_path, cache_dir, monkeypatch, capsys):
    rng = np.random.default_rng(0)
    root = tmp_path / "three"
    for split, classes in (("train", ("a", "b", "c")), ("test", ("a", "b"))):  # test has no "c"
        for k, name in enumerate(classes):
            (root / split / name).mkdir(parents=True)
            for i in range(12 if split == "train" else 6):
                img = make_image(k % 2, rng)
                (img if k < 2 else img.rotate(90)).save(root / split / name / f"{i}.png")
    code, lines, out = _cli(monkeypatch, capsys, "train", root, "--backbone", "resnet18", "--weights", "none",
                            "--strategy", "full", "--epochs", "1", "--image-size", "32", "--output-dir",
                            tmp_path / "runs", "--name", "t", "-q")
    assert (code, lines) == (0, [])
    test_line = next(line for line in out.splitlines() if line.startswith("test:"))
    assert "per class recall" in test_line and re.search(r"\bc undefined\b", test_line), test_line
    assert RunFolder(tmp_path / "runs" / "t").finished
