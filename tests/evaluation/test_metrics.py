"""Metrics against values computed by hand; undefined values stay undefined."""

import json
import math

import numpy as np
import pytest

from medtl.core.io import clean
from medtl.evaluation.metrics import binary_metrics, choose_threshold, multiclass_metrics


def test_binary_metrics_match_hand_computation():
    y = np.array([0, 0, 0, 1, 1, 1, 1])
    p = np.array([0.1, 0.6, 0.3, 0.8, 0.4, 0.9, 0.7])
    m = binary_metrics(y, p, threshold=0.5)
    # predictions at 0.5: 0 1 0 1 0 1 1 -> TN 2, FP 1, FN 1, TP 3
    assert m["confusion_matrix"] == [[2, 1], [1, 3]]
    assert m["accuracy"] == pytest.approx(5 / 7)
    assert m["sensitivity"] == m["recall"] == pytest.approx(3 / 4)
    assert m["specificity"] == pytest.approx(2 / 3)
    assert m["precision"] == pytest.approx(3 / 4)
    assert m["f1"] == pytest.approx(3 / 4)
    assert m["gmean"] == pytest.approx(math.sqrt(3 / 4 * 2 / 3))
    # AUC: positive-negative pairs ranked correctly: 0.8>all, 0.9>all, 0.7>all, 0.4>0.1,0.3 -> 11 / 12
    assert m["auc"] == pytest.approx(11 / 12)
    expected_loss = -np.mean(np.where(y == 1, np.log(p), np.log(1 - p)))
    assert m["loss"] == pytest.approx(expected_loss)


def test_undefined_values_are_nan_and_json_null():
    m = binary_metrics(np.array([1, 1, 1]), np.array([0.2, 0.3, 0.1]), 0.5)
    assert math.isnan(m["auc"]) and math.isnan(m["specificity"]) and math.isnan(m["precision"])
    assert m["sensitivity"] == 0.0
    data = json.loads(json.dumps(clean(m)))
    assert data["auc"] is None and data["precision"] is None and data["sensitivity"] == 0.0


def test_multiclass_per_class_and_absent_class_auc_skipped():
    y = np.array([0, 0, 1, 1, 2, 2])
    probs = np.array([[.8, .1, .1], [.3, .6, .1], [.1, .8, .1], [.2, .7, .1], [.1, .2, .7], [.6, .2, .2]])
    m = multiclass_metrics(y, probs, ["a", "b", "c"])
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["per_class"]["b"]["precision"] == pytest.approx(2 / 3)
    assert m["per_class"]["a"]["recall"] == pytest.approx(1 / 2)
    assert m["per_class"]["c"]["specificity"] == pytest.approx(1.0)
    assert m["gmean"] == pytest.approx((0.5 * 1.0 * 0.5) ** (1 / 3))
    absent = multiclass_metrics(np.array([0, 1, 0]), probs[:3], ["a", "b", "c"])
    assert math.isnan(absent["per_class"]["c"]["auc"]) and not math.isnan(absent["auc"])


def test_threshold_choice():
    y = np.array([0, 0, 0, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.65, 0.6, 0.8, 0.9])
    t = choose_threshold(y, p, "youden")
    m = binary_metrics(y, p, t)
    assert m["sensitivity"] + m["specificity"] - 1 == pytest.approx(2 / 3)
    assert choose_threshold(y, p, "0.3") == 0.3
    assert binary_metrics(y, p, choose_threshold(y, p, "f1"))["f1"] == pytest.approx(6 / 7)
    with pytest.raises(ValueError, match="youden, f1"):
        choose_threshold(y, p, "best")


def test_chosen_threshold_lies_between_scores_so_rounding_cannot_flip_a_case():
    y = np.array([0, 0, 0, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.65, 0.6, 0.8, 0.9])
    for method in ("youden", "f1"):
        t = choose_threshold(y, p, method)
        assert not np.isclose(p, t).any()  # never on a score
        gap = np.abs(p - t).min()
        jittered = p + np.array([1, -1, 1, -1, 1, -1]) * gap / 2
        assert (binary_metrics(y, jittered, t)["confusion_matrix"]
                == binary_metrics(y, p, t)["confusion_matrix"])
