"""Test-time augmentation (eval.tta=hflip): the run's validation and test scores, `medtl predict`, evaluate
and the exported model all average the logits of each image and of its mirror."""

import csv
import json

import numpy as np
import pytest
import torch

from medtl.api import make_config
from medtl.core.errors import MedtlError
from medtl.deploy.export import export
from medtl.deploy.predictor import Predictor
from medtl.models.strategies import Mirrored


def _saved(run_dir, split: str) -> tuple[list[str], np.ndarray]:
    rows = list(csv.DictReader(open(run_dir / f"predictions_{split}.csv")))
    return [r["path"] for r in rows], np.array([float(r["prob_pos"]) for r in rows])


def test_mirrored_runs_score_predict_and_export_the_same_way(image_tree, cache_dir, tmp_path):
    import medtl
    run_dir = medtl.train(image_tree, "efficientnet_lite0", "full", epochs=1, image_size=32, out=tmp_path / "runs",
                          name="tta", tta="hflip").path
    pred = Predictor.from_run(run_dir, device="cpu", engine="torch")
    assert pred.tta and isinstance(pred.net, Mirrored)
    assert json.loads((run_dir / "metrics.json").read_text())["tta"] == {"applied": "hflip", "reason": "eval.tta=hflip"}
    paths, saved = _saved(run_dir, "test")
    x = torch.stack([pred.load(p) for p in paths])
    mirrored = pred.probabilities(x)[:, 1]
    assert np.abs(mirrored - saved).max() < 1e-5  # the run scored test as predict does
    plain = Predictor.from_run(run_dir, device="cpu", engine="torch")
    plain.tta = False
    assert np.abs(plain.probabilities(x)[:, 1] - mirrored).max() > 1e-4  # the mirror changed something
    with torch.inference_mode():
        net = pred.model
        by_hand = (net(pred.normalized(x)) + net(pred.normalized(torch.flip(x, dims=[3])))) / 2
    assert np.abs(torch.sigmoid(by_hand[:, 0]).numpy() - mirrored).max() < 1e-5
    assert medtl.evaluate(run_dir, image_tree, split="test")["auc"] == pytest.approx(
        _auc(paths, saved), abs=1e-6)
    _, diff = export(run_dir, "onnx", tmp_path / "m.onnx", paths[:4])
    assert diff < 1e-4  # the exported graph mirrors too: parity with pred.net


def _auc(paths: list[str], probs: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score
    return roc_auc_score([p.split("/")[-2] == "pos" for p in paths], probs)


def test_tta_needs_mirrorable_data(tmp_path):
    with pytest.raises(MedtlError, match="eval.tta=hflip with data.hflip=false"):
        make_config(tmp_path, tta="hflip", hflip=False)
    assert make_config(tmp_path, tta="hflip").eval.tta == "hflip"


def test_auto_keeps_the_mirror_only_when_validation_gains(image_tree, cache_dir, tmp_path):
    """tta=auto: the decision follows the recorded validation scores, the run's metrics are the chosen way's,
    and the checkpoint (what predict follows) holds the resolved choice."""
    import medtl
    from medtl.models.checkpoint import Checkpoint
    from medtl.training.auto.search import beats as _helps
    run_dir = medtl.train(image_tree, "efficientnet_lite0", "full", epochs=1, image_size=32, out=tmp_path / "runs",
                          name="auto_tta", tta="auto").path
    metrics = json.loads((run_dir / "metrics.json").read_text())
    record = metrics["tta"]
    kept = record["applied"] == "hflip"
    assert kept == _helps(record["mirrored_val"], record["plain_val"], "auc") and "test was not looked at" in record["reason"]
    chosen = record["mirrored_val" if kept else "plain_val"]
    assert metrics["splits"]["val"]["auc"] == pytest.approx(chosen["auc"], abs=1e-9)
    assert Checkpoint.load(run_dir / "checkpoint.pt").config.eval.tta == record["applied"]
    pred = Predictor.from_run(run_dir, device="cpu", engine="torch")
    paths, saved = _saved(run_dir, "test")
    assert np.abs(pred.probabilities(torch.stack([pred.load(p) for p in paths]))[:, 1] - saved).max() < 1e-5


def test_the_rule_ties_close_aucs_to_the_lower_loss():
    from medtl.training.auto.search import beats as _helps
    assert _helps({"auc": 0.9500, "loss": 0.20}, {"auc": 0.9510, "loss": 0.25}, "auc")  # tie: lower loss
    assert not _helps({"auc": 0.9500, "loss": 0.20}, {"auc": 0.9600, "loss": 0.25}, "auc")  # clearly lower AUC
    assert _helps({"auc": 0.9300, "loss": 0.20}, {"auc": 0.9600, "loss": 0.25}, "loss")


@pytest.mark.parametrize("strategy", ["linear", "partial"])
def test_cached_strategies_mirror_from_the_feature_cache(strategy, image_tree, cache_dir, tmp_path, caplog):
    """linear and partial score the mirror from cached frozen outputs (a view like the training ones): the same
    probabilities as the whole network on each image and its mirror, and a warm rerun computes no feature."""
    import logging
    import medtl
    settings = dict(epochs=1, image_size=32, out=tmp_path / "runs", tta="hflip")
    run_dir = medtl.train(image_tree, "efficientnet_lite0", strategy, name="cold", **settings).path
    pred = Predictor.from_run(run_dir, device="cpu", engine="torch")
    paths, saved = _saved(run_dir, "test")
    x = torch.stack([pred.load(p) for p in paths])
    assert np.abs(pred.probabilities(x)[:, 1] - saved).max() < 1e-4  # = the whole network, mirrored
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="medtl"):
        medtl.train(image_tree, "efficientnet_lite0", strategy, name="warm", **settings)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("features ")]
    assert any("view mirror: cache hit" in line for line in lines), lines
    assert not any("computed" in line for line in lines), lines
    assert not any("(mirrored too)" in r.getMessage() for r in caplog.records)
