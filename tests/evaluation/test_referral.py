"""Split-conformal referral (the math, on exchangeable synthetic probabilities) and the feature reference
record a run keeps for shift scores: saved whole, refused one line when damaged."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medtl.core.errors import MedtlError
from medtl.evaluation.conformal import (check_coverage, conformal_threshold, nonconformity, prediction_sets,
                                        refer, referral, referral_section)
from medtl.evaluation.shift import REFERENCE_FILE, FeatureReference, load_reference, shift_section, unlike_scores


def _exchangeable(rng: np.random.Generator, n: int, k: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities of a calibrated but unsure model, and labels drawn from them."""
    logits = rng.normal(0, 1.5, (n, k))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = np.array([rng.choice(k, p=p) for p in probs])
    return probs, labels


@pytest.mark.parametrize("coverage", [0.8, 0.9, 0.95])
def test_coverage_on_exchangeable_data_is_within_two_points_of_nominal(coverage):
    rng = np.random.default_rng(7)
    reached = []
    for _ in range(20):
        cal_p, cal_y = _exchangeable(rng, 500)
        new_p, new_y = _exchangeable(rng, 2000)
        sets, _ = referral(new_p, nonconformity(cal_p, cal_y), coverage)
        reached.append(sets[np.arange(len(new_y)), new_y].mean())
    assert abs(np.mean(reached) - coverage) < 0.02
    assert min(reached) > coverage - 0.07  # each split, too, is near (the guarantee holds on average)


def test_threshold_is_the_finite_sample_quantile():
    scores = np.arange(1, 10) / 10  # 9 scores: rank ceil(10 * 0.9) = 9, the largest
    assert conformal_threshold(scores, 0.9) == pytest.approx(0.9)
    assert conformal_threshold(scores, 0.5) == pytest.approx(0.5)  # rank ceil(10 * 0.5) = 5
    assert conformal_threshold(scores[:8], 0.9) == math.inf  # too few for 0.9: every class in every set
    sets = prediction_sets(np.array([[0.5, 0.5], [0.99, 0.01]]), math.inf)
    assert sets.all() and refer(sets).all()


def test_refer_when_the_set_is_not_the_predicted_class_alone():
    probs = np.array([[0.95, 0.05], [0.55, 0.45], [0.6, 0.4]])
    sets = prediction_sets(probs, 0.5)  # classes with p >= 0.5
    assert sets.tolist() == [[True, False], [True, False], [True, False]]
    # binary, a threshold of 0.3 on the positive class: the third image is predicted positive
    assert refer(sets, np.array([0, 0, 1])).tolist() == [False, False, True]
    assert refer(prediction_sets(probs, 0.56)).tolist() == [False, True, False]  # {0, 1} for the second


def test_binary_probabilities_as_one_column():
    assert nonconformity(np.array([0.9, 0.2]), np.array([1, 1])) == pytest.approx([0.1, 0.8])


@pytest.mark.parametrize("bad", [0, 1, 1.5, -0.1, True, "0.9"])
def test_coverage_outside_zero_one_is_refused_in_one_line(bad):
    with pytest.raises(MedtlError) as err:
        check_coverage(bad)
    assert str(err.value) == (f"--coverage {bad!r} is not a coverage; pass a fraction between 0 and 1, e.g. "
                              "--coverage 0.9")


def _reference(rng: np.random.Generator) -> FeatureReference:
    """Features around one direction (as a trained network's are: non-negative, correlated)."""
    return FeatureReference.build(rng.normal(size=(300, 16)) + 3, rng.normal(size=(120, 16)) + 3,
                                  rng.uniform(size=120))


def test_reference_round_trip_and_sections(tmp_path):
    rng = np.random.default_rng(0)
    ref = _reference(rng)
    path = ref.save(tmp_path / REFERENCE_FILE)
    back = load_reference(tmp_path)
    assert np.array_equal(back.train, ref.train) and np.array_equal(back.cal_scores, ref.cal_scores)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left
    percentile, flag = unlike_scores(back, rng.normal(size=(400, 16)) + 3)
    assert 35 < np.median(percentile) < 65 and flag.mean() < 0.05  # like the validation images
    far = unlike_scores(back, rng.normal(size=(50, 16)) - 3)[1]
    assert far.all()
    probs, labels = _exchangeable(rng, 200, 2)
    section = referral_section(back, probs, labels, 0.9)
    assert section["available"] and 0 <= section["referral_rate"] <= 1 and "coverage_reached" in section
    assert shift_section(None, rng.normal(size=(5, 16)))["available"] is False
    assert "run was made before medtl kept reference.npz" in referral_section(None, probs, labels, 0.9)["verdict"]
    assert load_reference(tmp_path / "nowhere") is None


@pytest.mark.parametrize("damage", ["text", "pickled", "missing", "shapes"])
def test_damaged_reference_is_refused_in_one_line(tmp_path, damage):
    path = tmp_path / REFERENCE_FILE
    ref = _reference(np.random.default_rng(1))
    arrays = {"version": np.array(1), "train": ref.train, "val": ref.val, "val_distances": ref.val_distances,
              "cal_scores": ref.cal_scores, "k": np.array(5)}
    if damage == "text":
        path.write_text("not a zip")
    else:
        if damage == "pickled":
            arrays["train"] = np.array([{"a": 1}], dtype=object)
        elif damage == "missing":
            del arrays["cal_scores"]
        else:
            arrays["val_distances"] = arrays["val_distances"][:3]
        np.savez(path, **arrays)
    with pytest.raises(MedtlError) as err:
        load_reference(tmp_path)
    message = str(err.value)
    assert message.startswith(f"{path} is not a feature reference medtl wrote (") and "\n" not in message
    assert message.endswith("delete it to predict without shift scores and referral, or train the run again")


@pytest.mark.parametrize("tta", [False, True])
def test_one_pass_gives_the_predicting_logits_and_the_pooled_features(tta):
    import torch

    from medtl.core.config import ModelConfig
    from medtl.models.reference import WithFeatures, outputs_of, split
    from medtl.models.strategies import build_classifier, for_prediction

    torch.manual_seed(0)
    model = build_classifier(ModelConfig(backbone="resnet18", weights="none", strategy="full"), 3).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        logits, feats = split(WithFeatures(model, tta)(x), outputs_of(model))
        assert torch.allclose(logits, for_prediction(model, "hflip" if tta else "none")(x), atol=1e-5)
        assert torch.allclose(feats, model.backbone(x), atol=1e-5) and feats.shape == (2, 512)
