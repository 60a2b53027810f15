"""Intervals, calibration and deduplicated test metrics: checked against plain computations."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest

import medtl
from medtl.evaluation.metrics import score
from medtl.evaluation.uncertainty import calibration, intervals


@pytest.mark.slow
def test_bootstrap_intervals_match_a_plain_stratified_bootstrap():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 300)
    p = np.clip(y * 0.3 + rng.random(300) * 0.7, 0, 1)
    fast = intervals(y, p, 0.5, resamples=2000, seed=3)
    plain = {k: [] for k in fast}
    draw = np.random.default_rng(7)
    for _ in range(2000):
        idx = np.concatenate([draw.choice(np.flatnonzero(y == c), (y == c).sum()) for c in (0, 1)])
        m = score(y[idx], p[idx], ["a", "b"], 0.5)
        for k in plain:
            plain[k].append(m[k])
    for k, (low, high) in fast.items():
        ref_low, ref_high = np.percentile(plain[k], [2.5, 97.5])
        assert abs(low - ref_low) < 0.015 and abs(high - ref_high) < 0.015, k
        assert low <= score(y, p, ["a", "b"], 0.5)[k] <= high


def test_multiclass_intervals_and_an_undefined_metric():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 40)
    probs = rng.dirichlet([1, 1, 1], 120)
    probs[np.arange(120), y] += 1.0
    probs /= probs.sum(1, keepdims=True)
    ci = intervals(y, probs, 0.5, resamples=500)
    m = score(y, probs, ["a", "b", "c"])
    assert all(ci[k][0] <= m[k] <= ci[k][1] for k in ("accuracy", "auc", "sensitivity", "f1"))
    none_positive = intervals(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.3, 0.4]), 0.9, resamples=50)
    assert none_positive["sensitivity"] == [0.0, 0.0] and none_positive["f1"] is None  # never defined


def test_calibration_by_hand():
    y = np.array([0, 0, 1, 1])
    p = np.array([0.1, 0.3, 0.7, 0.9])
    cal = calibration(y, p, bins=2)  # bins [0, .5): mean p .2, rate 0; [.5, 1]: mean p .8, rate 1
    assert cal["ece"] == pytest.approx(0.2) and cal["brier"] == pytest.approx(np.mean((p - y) ** 2))
    assert cal["bins"] == [[pytest.approx(0.2), 0.0, 2], [pytest.approx(0.8), 1.0, 2]]
    perfect = calibration(np.array([1, 0]), np.array([1.0, 0.0]))
    assert perfect["ece"] == 0 and perfect["brier"] == 0


def test_test_images_copied_from_train_are_left_out_of_the_deduplicated_metrics(image_tree, cache_dir, tmp_path):
    copies = []
    for i, source in enumerate(sorted((image_tree / "train" / "pos").iterdir())[:3]):
        target = image_tree / "test" / "pos" / f"copy_{i}.png"
        shutil.copy(source, target)
        copies.append(str(target))
    run = medtl.train(image_tree, out=tmp_path / "runs", name="d", backbone="resnet18", weights="none",
                      strategy="full", epochs=2, image_size=32)
    metrics = json.loads(run.folder.metrics.read_text())["splits"]
    dedup = metrics["test_deduplicated"]
    assert dedup["removed"] == 3 and dedup["n"] == metrics["test"]["n"] - 3
    rows = [r for r in csv.DictReader(open(run.folder.predictions("test"))) if r["path"] not in copies]
    y = np.array([int(r["label"] == "pos") for r in rows])
    p = np.array([float(r["prob_pos"]) for r in rows])
    by_hand = score(y, p, ["neg", "pos"], json.loads(run.folder.metrics.read_text())["threshold"])
    for key in ("accuracy", "sensitivity", "specificity", "auc"):
        assert dedup[key] == pytest.approx(by_hand[key], abs=1e-6), key
    assert "ci95" in dedup and "calibration" in dedup
    assert run.folder.reliability.is_file() and run.folder.confusion.is_file()


def test_no_copies_no_deduplicated_block(image_tree, cache_dir, tmp_path):
    run = medtl.train(image_tree, out=tmp_path / "runs", name="n", backbone="resnet18", weights="none",
                      strategy="full", epochs=1, image_size=32, bootstrap=0)
    splits = run.metrics["splits"]
    assert set(splits) == {"val", "test"} and splits["test"]["ci95"] == {}


@pytest.mark.slow
def test_temperature_scaling_is_fitted_on_validation_and_travels_with_the_model(image_tree, cache_dir, tmp_path):
    from medtl.evaluation.uncertainty import apply_temperature, fit_temperature

    rng = np.random.default_rng(0)
    z = rng.normal(0, 1, 2000)
    y = (rng.random(2000) < 1 / (1 + np.exp(-z))).astype(int)
    overconfident = 1 / (1 + np.exp(-3 * z))
    t = fit_temperature(y, overconfident)
    assert 2.5 < t < 3.5
    assert calibration(y, apply_temperature(overconfident, t))["ece"] < calibration(y, overconfident)["ece"] / 2

    run = medtl.train(image_tree, out=tmp_path / "runs", name="t", backbone="resnet18", weights="none",
                      strategy="full", epochs=2, image_size=32, calibrate="temperature")
    metrics = run.metrics
    assert metrics["temperature"] != 1.0 and set(metrics["uncalibrated"]) == {"val", "test"}
    rows = {r["path"]: float(r["prob_pos"]) for r in csv.DictReader(open(run.folder.predictions("test")))}
    again = run.predict(list(rows))  # the predictor applies the same temperature
    assert all(abs(r["prob_pos"] - rows[r["path"]]) < 1e-4 for r in again)
    path, diff = run.export("onnx")
    assert diff <= 1e-4
    again = run.evaluate(image_tree)  # re-scoring applies the temperature too, so decisions match the run's
    assert again["confusion_matrix"] == metrics["splits"]["test"]["confusion_matrix"]
    assert again["loss"] == pytest.approx(metrics["splits"]["test"]["loss"], abs=1e-5)
