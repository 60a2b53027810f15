"""Records of results: metrics.json's schema (keys and types, as torchvision checks its weights' meta), read and
written by `RunMetrics`; older files read as version 1, later ones refused in one line; test scored once, by
the finalize phase, after every choice."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

import medtl
from helpers import TINY
from medtl.core.errors import MedtlError
from medtl.evaluation.records import SCHEMA_VERSION, RunMetrics

# every key of a finished run's metrics.json and its type (optional keys: when set)
SCHEMA = {"schema_version": int, "best_epoch": int, "epochs_run": int, "train_seconds": float, "threshold": float,
          "threshold_method": str, "classes": list, "image_size": int, "split_sizes": dict, "splits": dict,
          "temperature": float, "tta": dict, "environment": dict, "weights_sha256": str}
SPLIT = {"n": int, "threshold": float, "loss": float, "accuracy": float, "auc": float, "sensitivity": float,
         "specificity": float, "f1": float, "confusion_matrix": list, "ci95": dict, "calibration": dict}


def test_metrics_json_has_its_schema(tiny_run):
    written = json.loads((tiny_run.path / "metrics.json").read_text())
    assert list(written) == list(SCHEMA)  # the keys in their order: no key lost, renamed or added unnoticed
    for key, kind in SCHEMA.items():
        assert isinstance(written[key], kind), (key, written[key])
    assert written["schema_version"] == SCHEMA_VERSION == 1
    assert set(written["splits"]) == {"val", "test"} and written["classes"] == ["neg", "pos"]
    assert written["split_sizes"] == {"train": 40, "val": 8, "test": 16}
    for split in ("val", "test"):
        for key, kind in SPLIT.items():
            assert isinstance(written["splits"][split][key], kind), (split, key)
    assert written["splits"]["test"]["n"] == 16
    record = RunMetrics.read(tiny_run.path / "metrics.json")
    assert record.to_dict() == written and record.best_epoch == written["best_epoch"]
    assert tiny_run.metrics == record and tiny_run.metrics.to_dict() == written  # the API gives the record
    assert tiny_run.metrics["splits"] == written["splits"]  # and reads its JSON keys as before


def test_an_older_metrics_file_reads_as_version_1_and_keeps_unknown_keys(tiny_run, tmp_path):
    old = json.loads((tiny_run.path / "metrics.json").read_text())
    del old["schema_version"]  # written before the key existed
    old["from_a_later_tool"] = {"x": 1}
    path = tmp_path / "old.json"
    path.write_text(json.dumps(old))
    record = RunMetrics.read(path)
    assert record.schema_version == 1 and record.splits == old["splits"] and record.tta == old["tta"]
    assert record.extra == {"from_a_later_tool": {"x": 1}}
    record.write(tmp_path / "again.json")
    assert json.loads((tmp_path / "again.json").read_text()) == {"schema_version": 1, **old}


def test_a_later_or_damaged_metrics_file_is_one_line(tiny_run, tmp_path):
    path = tiny_run.path / "metrics.json"
    later = {**json.loads(path.read_text()), "schema_version": SCHEMA_VERSION + 1}
    path.write_text(json.dumps(later))
    with pytest.raises(MedtlError) as err:
        tiny_run.metrics
    assert str(err.value) == (f"metrics file {path} has schema_version 2, which this medtl (schema 1) cannot read; "
                              "upgrade medtl (pip install -U medtl) to read it")
    path.write_text('{"best_epoch": 1')  # cut short
    with pytest.raises(MedtlError, match=r"^metrics file .* is unreadable \(JSONDecodeError\); train the run "
                                         r"again \(its metrics.json is damaged\)$"):
        RunMetrics.read(path)
    path.write_text(json.dumps({"best_epoch": 1}))
    with pytest.raises(MedtlError, match=r"^metrics file .* has no epochs_run, train_seconds, .*; train the run"):
        RunMetrics.read(path)
    assert path.read_text() == json.dumps({"best_epoch": 1})  # reading never rewrites the file


@pytest.mark.slow
@pytest.mark.parametrize("tta", ["none", "auto"])
def test_training_returns_validation_and_test_is_scored_once(image_tree, cache_dir, tmp_path, monkeypatch, tta):
    """The run phase returns validation's scores alone; the finalize phase scores test once, after the mirror
    is chosen, and those are the scores the run writes."""
    from medtl.training import scoring, train as train_module

    returned, tested = [], []
    real_train, real_score = train_module.train, scoring.score_split

    def spy_train(*a, **k):
        result = real_train(*a, **k)
        returned.append(set(result.scores))
        return result

    def spy_score(p, model, split, progress):
        scores = real_score(p, model, split, progress)
        tested.append((split, scores.probs.copy()))
        return scores
    monkeypatch.setattr(train_module, "train", spy_train)
    monkeypatch.setattr(scoring, "score_split", spy_score)
    run = medtl.train(image_tree, out=tmp_path / "runs", name=tta, progress=False, tta=tta, **TINY)
    assert returned == [{"val"}]
    assert [s for s, _ in tested] == ["test"]
    with open(run.path / "predictions_test.csv", newline="") as f:
        saved = np.array([float(r["prob_pos"]) for r in csv.DictReader(f)])
    assert len(saved) == 16 and np.abs(saved - tested[0][1]).max() < 1e-6  # written as scored (no temperature)
