"""Shared fixtures: tiny generated image folders, a cache folder, a small real X-ray run. Helpers the tests import
are in tests/helpers.py; each layer's folder (tests/core, tests/data, ...) marks its tests with the layer's name."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import kermany_links, make_image


@pytest.fixture
def image_tree(tmp_path: Path) -> Path:
    """root/train/{neg,pos} (24 each) and root/test/{neg,pos} (8 each), grayscale PNG."""
    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    for split, n in (("train", 24), ("test", 8)):
        for label, name in enumerate(("neg", "pos")):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                make_image(label, rng).save(folder / f"{name}_{i}.png")
    return root


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


