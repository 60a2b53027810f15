"""The core layer: atomic writes, the run-folder record, progress that suits where output goes."""

from __future__ import annotations

import logging

import pytest

from medtl.core import logs
from medtl.core.io import atomic_write, clean
from medtl.core.runfolder import RunFolder


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "metrics.json"
    atomic_write(target, "old")

    def fail(fh):
        fh.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, fail)
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]  # no temporary file left
    atomic_write(target, b"new")
    assert target.read_bytes() == b"new"


def test_clean_makes_undefined_values_null():
    import numpy as np

    assert clean({"auc": float("nan"), "n": np.int64(3), "p": np.float32(0.5), "v": [np.inf]}) == \
        {"auc": None, "n": 3, "p": 0.5, "v": [None]}


def test_run_folder_names_every_file_once(tmp_path):
    folder = RunFolder(tmp_path / "r")
    names = [folder.config, folder.metrics, folder.history, folder.curves, folder.checkpoint, folder.log,
             folder.skipped, folder.audit, folder.state, folder.cam_grid, folder.predictions("test"),
             folder.export("onnx"), folder.export("torchscript")]
    assert len({p.name for p in names}) == len(names) and all(p.parent == tmp_path / "r" for p in names)
    assert not folder.finished
    with pytest.raises(Exception, match="did not finish"):
        folder.read_metrics()


def test_progress_is_log_lines_when_output_is_not_a_terminal(monkeypatch, caplog, capsys):
    monkeypatch.setattr(logs, "on_terminal", lambda: False)
    monkeypatch.setattr(logs, "LOG_EVERY_S", 0.0)
    with caplog.at_level(logging.INFO, logger="medtl"):
        assert list(logs.progress(range(3), "decode images", unit="img")) == [0, 1, 2]
    assert "decode images: 3/3 img" in caplog.text
    assert "\r" not in capsys.readouterr().err  # no bar frames
    assert list(logs.progress(range(2), "x", enabled=False)) == [0, 1]


def test_progress_is_a_bar_on_a_terminal(monkeypatch):
    monkeypatch.setattr(logs, "on_terminal", lambda: True)
    from tqdm import tqdm

    assert isinstance(logs.progress(range(3), "train"), tqdm)
