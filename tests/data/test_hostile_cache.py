"""The cache under faults: MEDTL_CACHE on a file, a full disk, what kill -9 leaves, a copied data folder."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import medtl
from helpers import TINY
from medtl.core.errors import MedtlError
from medtl.core.io import cache_root, sweep_temps
from medtl.data.images import build_store
from medtl.training.features import cached

FIX_DISK = "; free disk space, fix the folder's permissions, or write elsewhere (--output-dir, MEDTL_CACHE)"
# a writer that opens its temporary file, says so, and hangs: killed with -9 mid-write
WRITER = """
import sys, time
from medtl.core.io import atomic_write
atomic_write(sys.argv[1], lambda fh: (print("writing", flush=True), time.sleep(600)))
"""


def medtl_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medtl", *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})})


def error_lines(done: subprocess.CompletedProcess) -> list[str]:
    assert "Traceback" not in done.stderr, done.stderr
    return [line for line in done.stderr.splitlines() if line.startswith("error:")]


def temps(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".tmp")]


def refs_of(root: Path) -> list[str]:
    return sorted(str(p) for p in root.rglob("*.png"))


# D9
@pytest.mark.slow
def test_medtl_cache_on_a_file_is_one_line_in_train_and_predict(image_tree, tiny_trained, tmp_path):
    run_dir, data = tiny_trained
    blocker = tmp_path / "cache-file"
    blocker.write_text("not a folder")
    done = medtl_cli("train", str(image_tree), "--backbone", "resnet18", "--weights", "none", "--strategy", "full",
                     "--epochs", "1", "--image-size", "32", "--output-dir", str(tmp_path / "runs"), "--name", "r",
                     env={"MEDTL_CACHE": str(blocker)})
    assert done.returncode == 2 and error_lines(done) == [
        f"error: MEDTL_CACHE={blocker}: {blocker} is not a folder; point MEDTL_CACHE at a folder (made if missing), "
        "or unset it"]
    assert not (tmp_path / "runs" / "r").exists() and blocker.read_text() == "not a folder"
    below = blocker / "medtl"  # a file above the cache folder
    done = medtl_cli("predict", str(run_dir), str(data / "test"), "--engine", "onnxruntime", "--output",
                     str(tmp_path / "p.csv"), env={"MEDTL_CACHE": str(below)})
    assert done.returncode == 2 and error_lines(done) == [
        f"error: MEDTL_CACHE={below}: {blocker} is not a folder; point MEDTL_CACHE at a folder (made if missing), "
        "or unset it"]
    assert not (tmp_path / "p.csv").exists()
    with pytest.raises(MedtlError, match=r"^cache.dir .*cache-file: .*cache-file is not a folder; set "
                                         r"cache.dir to a folder \(made if missing\)$"):
        cache_root(str(blocker))


# D7
def test_a_short_write_of_the_image_cache_is_one_line_and_leaves_no_temp_file(image_tree, cache_dir, tmp_path,
                                                                                monkeypatch):
    def full_disk(fh, array, *args, **kwargs):
        fh.write(b"\x93NUMPY" + bytes(1000))  # part of it, as numpy's tofile on a full disk
        raise OSError("286720 requested and 176000 written")  # numpy's short write: no errno
    monkeypatch.setattr(np, "save", full_disk)
    with pytest.raises(MedtlError) as caught:
        medtl.train(image_tree, out=tmp_path / "runs", name="r", **TINY)
    message = str(caught.value)
    assert message.startswith(f"cannot write {cache_dir / 'images'}/") and ".npy: " in message
    assert message.endswith(": the disk took only part of it (286720 requested and 176000 written)" + FIX_DISK)
    assert "\n" not in message and list((cache_dir / "images").iterdir()) == []  # no temp file, no half a cache
    assert not (tmp_path / "runs" / "r").exists()


@pytest.mark.slow
def test_a_full_cache_disk_is_one_line_on_a_real_small_filesystem(image_tree, tmp_path):
    disk = tmp_path / "small"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({mounted.stderr.decode().strip()[:120]})")
    try:  # 64 images at 64 px decode to 262 KB: more than the 200 KB disk holds
        done = medtl_cli("train", str(image_tree), "--backbone", "resnet18", "--weights", "none", "--strategy",
                         "full", "--epochs", "1", "--image-size", "64", "--output-dir", str(tmp_path / "runs"),
                         "--name", "r", env={"MEDTL_CACHE": str(disk)})
        [line] = error_lines(done)
        assert done.returncode == 2 and line.startswith(f"error: cannot write {disk / 'images'}/")
        assert line.endswith(FIX_DISK) and ".npy: " in line
        assert temps(disk) == [] and list((disk / "images").iterdir()) == []
        assert not (tmp_path / "runs" / "r").exists()
    finally:
        subprocess.run(["umount", str(disk)], check=True)


# D22
def start_writer(path: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    return proc


def killed_writer(path: Path) -> Path:
    """The temporary file a writer of `path` leaves when killed with -9 mid-write."""
    proc = start_writer(path)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    [tmp] = [p for p in path.parent.iterdir() if p.name == f".{path.name}.{proc.pid}.tmp"]
    return tmp


@pytest.mark.slow
def test_temp_files_of_killed_processes_are_swept_and_a_live_ones_kept(image_tree, tmp_path, tiny_run):
    cache = tmp_path / "cache"
    for sub in ("images", "features", "engines"):
        (cache / sub).mkdir(parents=True)
    dead_images = killed_writer(cache / "images" / "other-data.npy")  # a 0-byte file of another data set
    dead_features = killed_writer(cache / "features" / "other.npy")
    live = start_writer(cache / "images" / "being-written.npy")
    try:
        [live_tmp] = [p for p in (cache / "images").iterdir() if p.name.endswith(f".{live.pid}.tmp")]
        mine = cache / "images" / f".mine.npy.{os.getpid()}.tmp"  # this process's own (another thread's) write
        mine.write_bytes(b"")
        not_ours = [cache / "images" / name for name in (".notes.tmp", "x.123.tmp", ".x.12a.tmp")]
        for path in not_ours:
            path.write_bytes(b"kept")
        build_store(refs_of(image_tree), 32, cache, progress=False)
        assert not dead_images.exists() and live_tmp.exists() and mine.exists()
        assert all(p.read_bytes() == b"kept" for p in not_ours)  # not medtl's temporary names
        cached(cache, "k" * 24, 3, lambda: np.ones((3, 2), np.float32))
        assert not dead_features.exists()
    finally:
        live.kill()
        live.wait(timeout=30)
    assert sweep_temps(cache / "images") == [live_tmp]  # now its writer is gone too
    run_dir = tiny_run.path
    dead_export = killed_writer(run_dir / "model.onnx")
    from medtl.deploy.export import export
    export(run_dir, "onnx", run_dir / "model.onnx")
    assert not dead_export.exists() and temps(run_dir) == []


# D25
def test_a_copied_data_folder_reuses_the_image_cache(image_tree, tmp_path, caplog):
    cache = tmp_path / "cache"
    bad = image_tree / "train" / "pos" / "broken.png"
    bad.write_bytes(b"not a png")
    first = build_store(refs_of(image_tree), 32, cache, progress=False)
    [npy] = (cache / "images").glob("*.npy")
    stamp = npy.stat().st_mtime_ns
    copy = Path(shutil.copytree(image_tree, tmp_path / "copy"))
    with caplog.at_level(logging.WARNING):
        second = build_store(refs_of(copy), 32, cache, progress=False)
        again = build_store(refs_of(image_tree), 32, cache, progress=False)  # and back
    assert [r.getMessage() for r in caplog.records if "rebuilding" in r.getMessage()] == []
    assert second.key == first.key and npy.stat().st_mtime_ns == stamp and list((cache / "images").glob("*.npy")) == [npy]
    assert second.refs == refs_of(copy) and np.array_equal(second.array, first.array)
    broken = str(copy / "train" / "pos" / "broken.png")
    assert list(second.failed) == [broken] and str(image_tree) not in second.failed[broken]
    assert again.failed == first.failed
