"""Resume: a run killed with SIGKILL mid-epoch continues to the same metrics and checkpoint as one never killed."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from medtl.core.errors import MedtlError
from medtl.models.checkpoint import state_digest
from medtl.training.resume import load_state

ARGS = ["--strategy", "scratch", "--image-size", "32", "--epochs", "6", "--set", "train.patience=10",
        "--set", "train.batch_size=8", "--set", "runtime.deterministic=true", "--quiet"]


def _cmd(*args):
    return [sys.executable, "-m", "medtl", "train", *map(str, args)]


@pytest.mark.slow
def test_sigkill_then_resume_matches_an_uninterrupted_run(image_tree, tmp_path):
    env = {**os.environ, "MEDTL_CACHE": str(tmp_path / "cache")}
    out = tmp_path / "runs"
    whole = subprocess.run(_cmd(image_tree, *ARGS, "--out", out, "--name", "whole"), env=env, capture_output=True,
                           text=True, timeout=600)
    assert whole.returncode == 0, whole.stderr
    proc = subprocess.Popen(_cmd(image_tree, *ARGS, "--out", out, "--name", "killed"), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = out / "killed" / "train.log"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not (log.exists() and "epoch 2/6" in log.read_text()):
        time.sleep(0.02)
    time.sleep(0.2)  # into epoch 3
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = load_state(out / "killed" / "state.pt")
    assert 1 <= saved["fit"]["epoch"] < 6 and not (out / "killed" / "metrics.json").exists()
    resumed = subprocess.run(_cmd("--resume", out / "killed", "--quiet"), env=env, capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    a = json.loads((out / "whole" / "metrics.json").read_text())
    b = json.loads((out / "killed" / "metrics.json").read_text())
    assert a["splits"] == b["splits"] and a["best_epoch"] == b["best_epoch"] and a["epochs_run"] == b["epochs_run"]
    assert a["weights_sha256"] == b["weights_sha256"]  # the checkpoints hold identical weights
    ckpt = torch.load(out / "killed" / "checkpoint.pt", weights_only=True)
    assert state_digest(ckpt["model"]) == b["weights_sha256"]
    assert not (out / "killed" / "state.pt").exists()  # finished: the state is removed
    again = subprocess.run(_cmd("--resume", out / "killed"), env=env, capture_output=True, text=True)
    assert again.returncode == 2 and "already finished" in again.stderr


def test_a_damaged_state_is_never_loaded(tmp_path):
    path = tmp_path / "state.pt"
    torch.save({"fit": {"epoch": 1}}, path)
    path.write_bytes(path.read_bytes()[:40])  # what a crash mid-write would leave without the rename
    with pytest.raises(MedtlError, match="unreadable .* delete it to restart"):
        load_state(path)


def test_deterministic_mode_holds_during_the_run_only(image_tree, tmp_path, cache_dir):
    from medtl.core.config import RunConfig, apply_overrides
    from medtl.training.run import run

    seen = []
    cfg = apply_overrides(RunConfig(), {"data.path": str(image_tree), "data.image_size": "32", "train.epochs": "2",
                                        "model.strategy": "scratch", "runtime.deterministic": "true",
                                        "out": str(tmp_path / "runs")})
    run(cfg, progress=False, on_epoch=lambda epoch, val: seen.append(torch.are_deterministic_algorithms_enabled()))
    assert seen == [True, True]
    assert not torch.are_deterministic_algorithms_enabled()  # the process's setting is given back
