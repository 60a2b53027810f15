"""Hostile input and faults: one line (MedtlError) or success, never a traceback; nothing lost, nothing mixed."""

from __future__ import annotations

import csv
import errno
import fcntl
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

import medtl
from helpers import TINY
from medtl.core.errors import MedtlError
from medtl.core.runfolder import RunFolder



def write_bomb(path: Path, side: int = 30000) -> Path:
    """A real PNG of under 1 MB whose header claims side x side pixels (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    z = zlib.compressobj(9)
    data = b"".join(z.compress(bytes(side + 1)) for _ in range(side)) + z.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    return write_bomb(tmp_path_factory.mktemp("bomb") / "bomb.png")


def _no_temporary_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".tmp")]


@pytest.mark.slow
def test_a_decompression_bomb_is_an_unreadable_image_everywhere(image_tree, cache_dir, tmp_path, bomb):
    target = image_tree / "train" / "pos" / "bomb.png"
    target.write_bytes(bomb.read_bytes())
    run = medtl.train(image_tree, out=tmp_path / "runs", name="r", **TINY)
    rows = list(csv.DictReader(open(run.folder.skipped)))
    assert [Path(r["path"]).name for r in rows] == ["bomb.png"] and "pixel limit" in rows[0]["reason"]
    with pytest.raises(MedtlError, match="cannot use image .*bomb.png .*pixel limit"):
        medtl.train(image_tree, out=tmp_path / "runs", name="strict", strict=True, **TINY)
    assert not (tmp_path / "runs" / "strict").exists()  # refused before the run folder was made
    predicted = run.predict([bomb, *sorted((image_tree / "test" / "pos").iterdir())[:2]])
    assert len(predicted) == 2 and "pixel limit" in predicted.failed[str(bomb)]
    written, failed = run.explain([bomb], out=tmp_path / "cams")
    assert not written and "pixel limit" in failed[str(bomb)]
    report = medtl.audit(image_tree, perceptual=False)
    assert any(path.endswith("bomb.png") and "pixel limit" in why for path, why in report["unreadable"].items())


def test_the_pixel_limit_is_a_setting(image_tree, cache_dir, tmp_path):
    from medtl.data.images import open_image

    path = sorted((image_tree / "test" / "pos").iterdir())[0]  # 40 x 40
    with pytest.raises(ValueError, match=r"40x40 px .* over the pixel limit"):
        open_image(str(path), max_pixels=1000)
    from PIL import Image

    Image.new("L", (50, 50), 100).save(image_tree / "train" / "pos" / "large.png")
    run = medtl.train(image_tree, out=tmp_path / "runs", name="tiny", max_pixels=1600, **{**TINY, "epochs": 1})
    rows = list(csv.DictReader(open(run.folder.skipped)))
    assert [Path(r["path"]).name for r in rows] == ["large.png"]  # 50 x 50 refused, 40 x 40 kept...
    assert run.config.data.max_pixels == 1600  # ...by the setting the run folder records
    with pytest.raises(MedtlError, match="data.max_pixels=0 is out of range"):
        medtl.make_config(image_tree, max_pixels=0)


def test_a_run_folder_in_use_is_locked_and_an_unfinished_one_needs_resume(image_tree, cache_dir, tmp_path):
    folder = RunFolder(tmp_path / "runs" / "s")
    folder.path.mkdir(parents=True)
    with open(folder.lock, "w") as held:  # another medtl process is writing this run
        fcntl.flock(held, fcntl.LOCK_EX)
        held.write("medtl pid 12345")
        held.flush()
        with pytest.raises(MedtlError, match=r"run folder .*s is in use by medtl pid 12345; .*another --name"):
            medtl.train(image_tree, out=tmp_path / "runs", name="s", **TINY)
    folder.lock.unlink()
    folder.state.write_bytes(b"epochs of an earlier, killed run")
    with pytest.raises(MedtlError, match=r"holds an unfinished run .* --resume"):
        medtl.train(image_tree, out=tmp_path / "runs", name="s", **TINY)
    assert folder.state.read_bytes() == b"epochs of an earlier, killed run"  # not deleted, not trained over


def test_a_damaged_training_state_is_refused_in_one_line(tmp_path):
    from medtl.training.resume import load_state, save_state

    path = tmp_path / "state.pt"
    save_state(path, {"fit": {"epoch": 3}, "model": {"w": torch.arange(1000, dtype=torch.float32)}})
    good = path.read_bytes()
    rng = np.random.default_rng(0)
    for _ in range(200):  # flipped bits anywhere: the header, the pickle or the tensor bytes
        damaged = bytearray(good)
        bit = int(rng.integers(len(damaged) * 8))
        damaged[bit // 8] ^= 1 << (bit % 8)
        path.write_bytes(bytes(damaged))
        with pytest.raises(MedtlError) as err:
            load_state(path)
        assert "delete it to restart" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.slow
def test_a_changed_checkpoint_is_refused(image_tree, cache_dir, tmp_path):
    run = medtl.train(image_tree, out=tmp_path / "runs", name="c", **TINY)
    state = torch.load(run.folder.checkpoint, weights_only=True)
    state["model"]["head.weight"] += 1.0  # same shapes, other values
    torch.save(state, run.folder.checkpoint)
    with pytest.raises(MedtlError, match="holds other weights than its run recorded"):
        medtl.Run.load(run.path).predict(image_tree / "test" / "pos")


def test_cache_contents_are_verified_and_rebuilt(image_tree, cache_dir, tmp_path, caplog):
    settings = {**TINY, "strategy": "linear", "weights": "none", "epochs": 3}
    first = medtl.train(image_tree, out=tmp_path / "runs", name="a", **settings)
    for npy in (cache_dir / "features").glob("*.npy"):
        array = np.load(npy)
        np.save(npy, np.zeros_like(array))  # same shape, other values
    images = next((cache_dir / "images").glob("*.npy"))
    np.save(images, np.zeros_like(np.load(images)))
    with caplog.at_level("WARNING", logger="medtl"):
        second = medtl.train(image_tree, out=tmp_path / "runs", name="b", **settings)
    assert caplog.text.count("does not match its checksum") >= 2  # the image cache and the feature caches
    assert second.metrics["splits"] == first.metrics["splits"]  # trained on rebuilt, not on zeroed, data


@pytest.mark.slow
def test_evaluating_a_class_folder_tree_scores_all_of_it(image_tree, cache_dir, tmp_path):
    run = medtl.train(image_tree, out=tmp_path / "runs", name="e", **TINY)
    whole = run.evaluate(image_tree / "test")  # test/{neg,pos}: 8 + 8 images, no split inside
    assert whole["n"] == 16
    one_class = run.evaluate(image_tree / "test" / "..", split="test")  # a split tree still uses its test/
    assert one_class["n"] == 16


def test_a_diverging_run_stops_in_one_line():
    from medtl.core.config import TrainConfig
    from medtl.training.loop import FitPlan, fit

    model = torch.nn.Linear(4, 1)
    batches = [(torch.randn(8, 4), torch.randint(0, 2, (8,)))]
    plan = FitPlan(TrainConfig(epochs=3), lambda out, y: out.sum() * float("nan"), torch.device("cpu"), ["a", "b"])
    with pytest.raises(MedtlError, match=r"training diverged in epoch 1 \(training loss nan\); lower the learning"):
        fit(model, batches, batches, lambda x: x, plan, progress=False)


def test_weights_of_another_architecture_are_one_line(image_tree, cache_dir, tmp_path):
    import torchvision

    path = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    with pytest.raises(MedtlError) as err:
        medtl.train(image_tree, out=tmp_path / "runs", backbone="efficientnet_lite0", strategy="linear",
                    weights=str(path), image_size=32, epochs=1)
    assert "do not fit backbone 'efficientnet_lite0'" in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "runs").exists()


def _mount_full_disk(path: Path) -> bool:
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(path)], capture_output=True)
    return done.returncode == 0


def test_a_full_disk_is_one_line_and_leaves_no_temporary_file(image_tree, cache_dir, tmp_path, monkeypatch):
    out = tmp_path / "full"
    mounted = _mount_full_disk(out)
    if not mounted:  # no permission to mount here: the same error, raised by the file system call itself
        real = os.replace

        def full(src, dst):
            if str(dst).startswith(str(out)):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real(src, dst)
        monkeypatch.setattr(os, "replace", full)
    try:
        with pytest.raises(MedtlError, match=r"cannot write .*full.*: No space left on device; free disk space"):
            medtl.train(image_tree, out=out, name="r", **TINY)
        assert _no_temporary_files(out) == []
    finally:
        if mounted:
            subprocess.run(["umount", str(out)], check=True)


@pytest.mark.slow
def test_a_failed_export_leaves_no_file(image_tree, cache_dir, tmp_path):
    run = medtl.train(image_tree, out=tmp_path / "runs", name="x", **TINY)
    with pytest.raises(MedtlError, match="do not deploy it"):
        run.export("onnx", tolerance=-1.0)  # no model can pass: the parity check fails
    assert not run.folder.export("onnx").exists() and _no_temporary_files(run.path) == []


@pytest.mark.slow
def test_file_names_with_tabs_and_newlines_survive_in_skipped_csv(image_tree, cache_dir, tmp_path):
    odd = image_tree / "train" / "pos" / "bad\tname\nwith lines.png"
    odd.write_bytes(b"not an image")
    run = medtl.train(image_tree, out=tmp_path / "runs", name="odd", **TINY)
    rows = list(csv.DictReader(open(run.folder.skipped, newline="")))
    assert [r["path"] for r in rows] == [str(odd)]


def test_a_path_longer_than_the_system_allows_is_one_line(tmp_path):
    with pytest.raises(MedtlError, match="cannot be used: File name too long; pass a shorter path"):
        medtl.train(tmp_path / ("a" * 5000), out=tmp_path / "runs", **TINY)


@pytest.mark.slow
def test_ctrl_c_exits_130_with_the_resume_command(image_tree, tmp_path):
    env = {**os.environ, "MEDTL_CACHE": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "medtl", "train", str(image_tree), "--backbone", "resnet18", "--weights", "none",
           "--strategy", "full", "--image-size", "32", "--epochs", "500", "--set", "train.patience=500",
           "--output-dir", str(tmp_path / "runs"), "--name", "c", "-q"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    log, deadline = tmp_path / "runs" / "c" / "train.log", time.monotonic() + 300
    while time.monotonic() < deadline and not (log.exists() and "epoch 2/500" in log.read_text()):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert lines == [f"error: interrupted: the last finished epoch is kept; continue with "
                     f"`medtl train --resume {tmp_path / 'runs' / 'c'}`"]
    folder = RunFolder(tmp_path / "runs" / "c")
    assert folder.state.is_file() and not folder.lock.exists() and not folder.finished
