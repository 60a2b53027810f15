"""torchrun DDP: sharded batches, and 2 CPU processes (gloo) training like one process with the same global batch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from medtl.training.distributed import ShardedBatches, World
from medtl.core.errors import MedtlError

from helpers import kermany_links, kill_tree


@pytest.mark.parametrize("rows,batch,procs,drop_last", [(37, 8, 2, True), (37, 8, 3, False), (10, 16, 2, False),
                                                        (64, 6, 4, True), (5, 5, 5, False)])
def test_the_slices_of_all_processes_are_the_batches_of_one(rows, batch, procs, drop_last):
    one = ShardedBatches(rows, batch, shuffle=True, drop_last=drop_last, seed=3)
    shards = [ShardedBatches(rows, batch, shuffle=True, drop_last=drop_last, seed=3, world=World(r, procs))
              for r in range(procs)]
    for epoch in (1, 2):
        for s in [one, *shards]:
            s.set_epoch(epoch)
        batches = list(one)
        per_rank = [list(s) for s in shards]
        assert [len(p) for p in per_rank] == [len(s) for s in shards]
        for i, b in enumerate(batches):
            joined = [row for p in per_rank if i < len(p) for row in p[i]]
            assert joined == b  # each rank a contiguous slice, in rank order
        if drop_last:
            assert all(len(b) == batch for b in batches)
        else:
            assert sorted(r for b in batches for r in b) == list(range(rows))
    one.set_epoch(1)
    first = list(one)
    one.set_epoch(2)
    assert list(one) != first  # reshuffled per epoch, from (seed, epoch) alone
    one.set_epoch(1)
    assert list(one) == first


def test_evaluation_order_is_kept_and_each_row_once():
    shards = [ShardedBatches(11, 4, shuffle=False, drop_last=False, world=World(r, 3)) for r in range(3)]
    rows = np.concatenate([s.indices() for s in shards])
    assert sorted(rows.tolist()) == list(range(11))


def test_fewer_rows_than_processes_is_refused_with_the_fix():
    with pytest.raises(MedtlError, match="raise train.batch_size or start fewer processes"):
        ShardedBatches(100, 2, shuffle=True, drop_last=True, world=World(0, 4))


def _torchrun(nproc: int, *args, env) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "medtl", "train", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)


def _train(*args, env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medtl", "train", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=900)


def _metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


@pytest.fixture(scope="module")
def kermany_small(tmp_path_factory) -> Path:
    return kermany_links(tmp_path_factory.mktemp("ddp") / "kermany", train=40, test=16)


@pytest.mark.slow
def test_two_processes_train_like_one_with_the_same_global_batch(kermany_small, tmp_path):
    """linear on real X-rays: the same optimizer steps, so the same metrics to float rounding."""
    env = {**os.environ, "MEDTL_CACHE": str(tmp_path / "cache")}
    args = [kermany_small, "--strategy", "linear", "--image-size", "64", "--epochs", "6", "--set",
            "train.batch_size=16", "--out", tmp_path / "runs", "--quiet"]
    ddp = _torchrun(2, *args, "--name", "ddp", env=env)  # first: its processes build the feature cache
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    one = _train(*args, "--name", "one", env=env)
    assert one.returncode == 0, one.stderr[-3000:]
    a, b = _metrics(tmp_path / "runs" / "one"), _metrics(tmp_path / "runs" / "ddp")
    assert a["best_epoch"] == b["best_epoch"] and a["epochs_run"] == b["epochs_run"]
    for split in ("val", "test"):
        assert a["splits"][split]["n"] == b["splits"][split]["n"]  # predictions of both ranks gathered
        assert b["splits"][split]["loss"] == pytest.approx(a["splits"][split]["loss"], abs=1e-5)
        assert b["splits"][split]["auc"] == pytest.approx(a["splits"][split]["auc"], abs=1e-9)
        assert b["splits"][split]["confusion_matrix"] == a["splits"][split]["confusion_matrix"]
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["ddp", "one"]  # rank 1 wrote no folder
    log = (tmp_path / "runs" / "ddp" / "train.log").read_text()
    assert "2 processes (DDP)" in log and log.count("run folder") == 1
    assert "features train view 0: computed" in log
    assert "features train view 0: cache hit" in (tmp_path / "runs" / "one" / "train.log").read_text()
    assert not list((tmp_path / "cache").rglob("*.tmp"))
    assert ddp.stdout.count("run folder:") == 1  # only rank 0 talks


@pytest.mark.slow
def test_ranks_hold_the_same_weights_and_batch_norm_statistics(kermany_small, tmp_path):
    """full fine-tuning (batch norm, augmentation) on 2 processes: the run's validation metrics, gathered
    from both ranks, equal a one-process re-scoring of rank 0's checkpoint."""
    env = {**os.environ, "MEDTL_CACHE": str(tmp_path / "cache")}
    run = tmp_path / "runs" / "full"
    ddp = _torchrun(2, kermany_small, "--strategy", "full", "--image-size", "64", "--epochs", "2", "--set",
                    "train.batch_size=16", "--out", run.parent, "--name", run.name, "--quiet", env=env)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert "Grad strides do not match" not in ddp.stderr  # model and inputs share the channels_last layout
    from medtl.deploy.evaluate import evaluate

    again = evaluate(run, str(kermany_small), "val", progress=False)
    saved = _metrics(run)["splits"]["val"]
    assert again["loss"] == pytest.approx(saved["loss"], abs=1e-5)
    assert again["auc"] == pytest.approx(saved["auc"], abs=1e-9)
    assert again["confusion_matrix"] == saved["confusion_matrix"]


@pytest.mark.slow
def test_a_killed_two_process_run_resumes_to_the_uninterrupted_result(kermany_small, tmp_path):
    """SIGKILL every process of a torchrun job after epoch 2 (a lost machine); resumed under torchrun, each
    process takes back its own RNG state, and the run ends with the uninterrupted run's metrics and weights."""
    import shutil
    import time

    env = {**os.environ, "MEDTL_CACHE": str(tmp_path / "cache")}
    out = tmp_path / "runs"
    args = [kermany_small, "--strategy", "full", "--image-size", "64", "--epochs", "4", "--set",
            "train.batch_size=16", "--set", "runtime.deterministic=true", "--out", out, "--quiet"]
    whole = _torchrun(2, *args, "--name", "whole", env=env)
    assert whole.returncode == 0, whole.stderr[-3000:]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "medtl",
           "train", *map(str, args), "--name", "killed"]
    job = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    log, deadline = out / "killed" / "train.log", time.monotonic() + 300
    while time.monotonic() < deadline and not (log.exists() and "epoch 2/4" in log.read_text()):
        time.sleep(0.02)
    time.sleep(0.3)  # into epoch 3
    kill_tree(job.pid)  # the launcher and both workers
    job.wait(timeout=60)
    assert not (out / "killed" / "metrics.json").exists()
    shutil.copytree(out / "killed", out / "elsewhere")
    resumed = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                              "-m", "medtl", "train", "--resume", str(out / "killed"), "--quiet"],
                             capture_output=True, text=True, env=env, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = _metrics(out / "whole"), _metrics(out / "killed")
    assert a["splits"] == b["splits"] and a["best_epoch"] == b["best_epoch"]
    assert a["weights_sha256"] == b["weights_sha256"]
    assert "resuming from" in log.read_text()
    one = _train("--resume", out / "elsewhere", "--quiet", env=env)  # fewer processes than saved it
    assert one.returncode == 0, one.stderr[-3000:]
    assert "saved by 2 process(es), resumed on 1" in (out / "elsewhere" / "train.log").read_text()


def test_kill_tree_reaches_processes_in_their_own_session():
    """The helper that simulates a lost machine kills by process id, including children that left the group."""
    import time

    from helpers import descendants

    parent = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time; subprocess.Popen([sys.executable, "
                               "'-c', 'import time; time.sleep(60)'], start_new_session=True); time.sleep(60)"])
    deadline = time.monotonic() + 20
    while len(descendants(parent.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    tree = descendants(parent.pid)
    assert len(tree) == 2
    kill_tree(parent.pid)
    parent.wait(timeout=10)
    time.sleep(0.2)
    child = Path(f"/proc/{tree[1]}/stat")
    assert not child.exists() or child.read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")  # gone or a zombie
