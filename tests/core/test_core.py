"""The core layer: atomic writes, the run-folder record, progress that suits where output goes."""

from __future__ import annotations

import logging

import pytest

from medtl.core import logs
from medtl.core.io import atomic_path, atomic_write, clean, temp_name, write_csv
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


def test_atomic_path_replaces_a_file_or_a_folder_only_when_its_block_ends_well(tmp_path):
    """The one helper for writers that take a path (an exporter, a folder filled file by file): the target
    appears whole or not at all, an earlier folder is replaced, and what a killed writer left is swept."""
    folder = tmp_path / "evaluation"
    folder.mkdir()
    (folder / "old.txt").write_text("old")
    with pytest.raises(RuntimeError, match="refused"):
        with atomic_path(folder) as temp:
            temp.mkdir()
            (temp / "metrics.json").write_text("{}")
            raise RuntimeError("refused")  # a failed parity check, a full disk
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evaluation"]  # no temporary left
    assert [p.name for p in folder.iterdir()] == ["old.txt"]  # untouched
    with atomic_path(folder) as temp:
        temp.mkdir()
        (temp / "metrics.json").write_text("{}")
    assert [p.name for p in folder.iterdir()] == ["metrics.json"]  # replaced whole
    left = tmp_path / ".model.onnx.999999999.tmp"  # a writer killed with -9 (no such process)
    left.mkdir()
    with atomic_path(tmp_path / "model.onnx") as temp:
        assert temp == temp_name(tmp_path / "model.onnx") and not left.exists()
        temp.write_bytes(b"onnx")
    assert (tmp_path / "model.onnx").read_bytes() == b"onnx"


def test_write_csv_quotes_what_must_be_and_reads_mappings_by_the_header(tmp_path):
    import csv

    path = write_csv(tmp_path / "p.csv", ["path", "reason"], [["a,b\n.png", "cut short"], {"reason": "x", "path": "c"}])
    assert list(csv.reader(path.open(newline=""))) == [["path", "reason"], ["a,b\n.png", "cut short"], ["c", "x"]]
    assert path.read_text().endswith("c,x\n")


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
        folder.require_finished()


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
