"""Shared fixtures: tiny generated image folders, a cache folder, a small real X-ray run. Helpers the tests import
are in tests/helpers.py. Every test is marked with the name of its folder (tests/core, tests/data, ...), the layer
it tests: `pytest -m data` runs one layer, `pytest -m "data and not slow"` its fast tier (the edit loop)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import TINY, kermany_links, write_tree

TESTS = Path(__file__).resolve().parent
# each folder of tests/ and its marker (pyproject.toml's markers): the layer of medtl its tests cover
LAYERS = ("core", "data", "models", "evaluation", "training", "deploy", "experiments", "interface")


def pytest_collection_modifyitems(items):
    for item in items:
        parts = Path(item.path).resolve().relative_to(TESTS).parts
        if len(parts) > 1 and parts[0] in LAYERS:
            item.add_marker(getattr(pytest.mark, parts[0]))


@pytest.fixture
def image_tree(tmp_path: Path) -> Path:
    """root/train/{neg,pos} (24 each) and root/test/{neg,pos} (8 each), grayscale PNG."""
    return write_tree(tmp_path / "data")


@pytest.fixture(scope="session")
def tiny_trained(tmp_path_factory) -> tuple[Path, Path]:
    """(run folder, data tree) of one tiny run (`helpers.TINY` on `image_tree`'s images), trained once for the
    whole session with its own cache. Read it only: `tiny_run` gives a test a copy it may change."""
    import medtl

    tmp = tmp_path_factory.mktemp("tiny")
    data = write_tree(tmp / "data")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDTL_CACHE", str(tmp / "cache"))
        run = medtl.train(data, out=tmp / "runs", name="tiny", progress=False, **TINY)
    return run.path, data


@pytest.fixture
def tiny_run(tiny_trained, cache_dir, tmp_path):
    """A copy of the session's tiny run at tmp_path/runs/tiny, as a `medtl.Run` (with a cache of the test's own)."""
    import medtl

    return medtl.Run.load(shutil.copytree(tiny_trained[0], tmp_path / "runs" / "tiny"))


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch) -> Path:
    path = tmp_path / "cache"
    monkeypatch.setenv("MEDTL_CACHE", str(path))
    return path


@pytest.fixture(scope="session")
def xray_run(tmp_path_factory):
    """A linear Lite0 run at 128 px on 60 train and 16 test X-rays per class (real Kermany images)."""
    tmp = tmp_path_factory.mktemp("xray")
    root = kermany_links(tmp / "kermany", train=60, test=16)
    env = {**os.environ, "MEDTL_CACHE": str(tmp / "cache")}
    done = subprocess.run([sys.executable, "-m", "medtl", "train", str(root), "--strategy", "linear", "--epochs", "10",
                           "--image-size", "128", "--out", str(tmp / "runs"), "--name", "xray", "--quiet"],
                          capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr
    return tmp / "runs" / "xray", root


