"""The cluster (patient) bootstrap: wider than the image bootstrap where a patient's images agree, and close to
its nominal coverage; the same metrics as the image bootstrap where every image is its own patient."""

from __future__ import annotations

import numpy as np
from scipy.stats import norm

from medtl.evaluation.clusters import cluster_values, split_values
from medtl.evaluation.metrics import class_table, decide, score
from medtl.evaluation.uncertainty import class_intervals, intervals

NOISE = 0.3  # image noise around the patient's own effect (sd 1): images of one patient nearly agree


def _correlated(rng: np.random.Generator, patients: int = 40, images: int = 8):
    """Two classes of `patients` patients with `images` images each: score = patient effect + a little noise."""
    y = np.repeat([0, 1], patients * images)
    effect = rng.normal(np.repeat([-1.0, 1.0], patients), 1.0)
    logit = np.repeat(effect, images) + rng.normal(0, NOISE, len(y))
    return y, 1 / (1 + np.exp(-logit)), [f"p{i // images}" for i in range(len(y))]


def test_the_cluster_interval_is_wider_and_covers_the_true_value_at_about_the_nominal_rate():
    truth = norm.cdf(1 / np.sqrt(1 + NOISE ** 2))  # P(logit > 0 | positive): the true sensitivity
    covered = {"patient": 0, "image": 0}
    width = {"patient": [], "image": []}
    runs = 200
    for seed in range(runs):
        y, p, keys = _correlated(np.random.default_rng(seed))
        for level, clusters in (("patient", keys), ("image", None)):
            low, high = intervals(y, p, 0.5, resamples=400, seed=seed, clusters=clusters)["sensitivity"]
            covered[level] += low <= truth <= high
            width[level].append(high - low)
    assert 0.88 <= covered["patient"] / runs <= 0.99, covered
    assert covered["image"] / runs < 0.75, covered  # images of one patient are not independent
    assert np.mean(width["patient"]) > 1.8 * np.mean(width["image"])


def test_patients_of_one_image_each_give_the_image_bootstrap():
    rng = np.random.default_rng(3)
    y, p, _ = _correlated(rng, 30, 1)
    alone = [f"k{i}" for i in range(len(y))]
    assert intervals(y, p, 0.5, 300, 1, clusters=alone) == intervals(y, p, 0.5, 300, 1)


def test_weighted_split_values_with_unit_weights_are_the_plain_metrics():
    rng = np.random.default_rng(5)
    for k in (2, 3):
        y = rng.integers(0, k, 90)
        probs = rng.dirichlet(np.ones(k), 90)
        probs[np.arange(90), y] += 0.7
        probs /= probs.sum(1, keepdims=True)
        table = class_table(probs[:, 1] if k == 2 else probs)
        values = split_values(np.ones((1, 90)), y, table, decide(table, 0.5))
        plain = score(y, probs[:, 1] if k == 2 else probs, [str(c) for c in range(k)], 0.5)
        for name in ("accuracy", "sensitivity", "specificity", "f1", "gmean", "auc"):
            assert np.isclose(values[name][0], plain[name]), (k, name)


def test_multiclass_cluster_intervals_hold_the_point_estimate_per_class():
    rng = np.random.default_rng(2)
    y = np.repeat([0, 1, 2], 60)
    keys = [f"p{i // 3}" for i in range(len(y))]  # three images per patient, one class each
    probs = rng.dirichlet([1, 1, 1], len(y))
    probs[np.arange(len(y)), y] += 1.0
    probs /= probs.sum(1, keepdims=True)
    per = class_intervals(y, probs, 300, 0, clusters=keys)
    plain = score(y, probs, ["a", "b", "c"])
    for c, name in enumerate(("a", "b", "c")):
        low, high = per[c]["recall"]
        assert low <= plain["per_class"][name]["recall"] <= high
    values = cluster_values(y, class_table(probs), decide(class_table(probs), 0.5), keys, 50, 0)
    assert values["accuracy"].shape == (50,)
