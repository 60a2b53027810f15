"""Whole runs on tiny generated images: every strategy, the run folder, re-scoring, caches."""

import csv
import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medtl.core.config import RunConfig, apply_overrides
from medtl.core.errors import MedtlError
from medtl.models.checkpoint import Checkpoint
from medtl.deploy.evaluate import evaluate
from medtl.training.run import run


def _cfg(root, out, **kw):
    base = {"data.path": str(root), "data.image_size": 32, "model.backbone": "resnet18", "model.weights": "none",
            "train.epochs": 2, "train.batch_size": 8, "out": str(out), "runtime.threads": 2}
    base.update(kw)
    return apply_overrides(RunConfig(), base)


@pytest.mark.parametrize("strategy", ["scratch", "linear", "partial", "full"])
def test_each_strategy_writes_a_complete_run_folder(image_tree, cache_dir, tmp_path, strategy):
    weights = {"scratch": "default", "linear": "none", "partial": "none", "full": "none"}[strategy]
    run_dir = run(_cfg(image_tree, tmp_path / "runs", **{"model.strategy": strategy, "model.weights": weights}),
                  progress=False)
    for name in ("config.yaml", "metrics.json", "history.csv", "curves.png", "checkpoint.pt", "train.log"):
        assert (run_dir / name).is_file(), name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics["splits"]) == {"val", "test"} and metrics["splits"]["test"]["n"] == 16
    assert 0 <= metrics["threshold"] <= 1 and metrics["train_seconds"] > 0
    ckpt = Checkpoint.load(run_dir / "checkpoint.pt")
    assert ckpt.classes == ["neg", "pos"] and ckpt.config.model.strategy == strategy
    again = evaluate(run_dir, str(image_tree), "test", progress=False)
    assert again["auc"] == pytest.approx(metrics["splits"]["test"]["auc"], abs=1e-6)
    assert again["confusion_matrix"] == metrics["splits"]["test"]["confusion_matrix"]


@pytest.mark.slow
def test_linear_learns_with_pretrained_features_and_reuses_the_cache(image_tree, cache_dir, tmp_path, caplog):
    cfg = _cfg(image_tree, tmp_path / "runs", **{"model.backbone": "efficientnet_lite0", "model.weights": "package",
                                                  "model.strategy": "linear", "train.epochs": 15,
                                                  "data.image_size": 48, "cache.feature_views": 1})
    first = run(cfg, progress=False)
    metrics = json.loads((first / "metrics.json").read_text())
    assert metrics["splits"]["test"]["auc"] > 0.9
    caplog.clear()  # the first run reads its own val and test features again when it scores their mirror
    with caplog.at_level(logging.INFO, logger="medtl"):
        second = run(apply_overrides(cfg, {"name": "again"}), progress=False)
    views = re.findall(r"features (\w+) view (\S+): (cache hit|computed)", caplog.text)
    mirrored = json.loads((second / "metrics.json").read_text())["tta"]["applied"] == "hflip"
    # train, val, test and one augmented view; val's mirror (tta=auto decides on it), and test's when it is kept
    expected = {("train", "0"), ("val", "0"), ("test", "0"), ("train", "1"), ("val", "mirror")} | (
        {("test", "mirror")} if mirrored else set())
    assert {(split, view) for split, view, _ in views} == expected and {how for *_, how in views} == {"cache hit"}
    assert json.loads((second / "metrics.json").read_text())["splits"] == metrics["splits"]  # hit == miss
    Image.new("L", (40, 40), 128).save(sorted((image_tree / "test" / "pos").iterdir())[0])
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="medtl"):
        run(apply_overrides(cfg, {"name": "changed"}), progress=False)
    assert "features test view 0: computed" in caplog.text  # a changed file invalidates the cache


def test_adapt_channels_and_multiclass(tmp_path, cache_dir):
    rng = np.random.default_rng(1)
    for c, value in enumerate((30, 120, 220)):
        folder = tmp_path / "three" / f"c{c}"
        folder.mkdir(parents=True)
        for i in range(12):
            Image.fromarray(np.clip(rng.normal(value, 10, (20, 20)), 0, 255).astype(np.uint8)).save(folder / f"{i}.png")
    run_dir = run(_cfg(tmp_path / "three", tmp_path / "runs", **{"data.channels": "adapt", "model.strategy": "full",
                                                                  "data.val_fraction": 0.25}), progress=False)
    ckpt = Checkpoint.load(run_dir / "checkpoint.pt")
    model = ckpt.build()
    assert ckpt.preprocess.in_chans == 1 and model.backbone.conv1.in_channels == 1 and model.head.out_features == 3
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics["splits"]["test"]["per_class"]) == {"c0", "c1", "c2"}
    assert len(metrics["splits"]["test"]["confusion_matrix"]) == 3


def test_checkpoint_loads_weights_only_and_finished_run_is_not_overwritten(image_tree, cache_dir, tmp_path):
    cfg = _cfg(image_tree, tmp_path / "runs", **{"model.strategy": "full", "name": "fixed"})
    run_dir = run(cfg, progress=False)
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert ckpt["config"]["model"]["strategy"] == "full"
    before = (run_dir / "checkpoint.pt").read_bytes()
    with pytest.raises(MedtlError, match="already holds a finished run"):
        run(cfg, progress=False)
    assert (run_dir / "checkpoint.pt").read_bytes() == before


def test_unreadable_image_skipped_and_listed(image_tree, cache_dir, tmp_path):
    bad = image_tree / "train" / "pos" / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    run_dir = run(_cfg(image_tree, tmp_path / "runs", **{"model.strategy": "full"}), progress=False)
    rows = list(csv.DictReader(open(run_dir / "skipped.csv")))
    assert [Path(r["path"]).name for r in rows] == ["broken.png"] and rows[0]["reason"]
    with pytest.raises(MedtlError, match="broken.png"):
        run(_cfg(image_tree, tmp_path / "runs2", **{"model.strategy": "full", "data.strict": True}), progress=False)
    assert not (tmp_path / "runs2").exists()  # nothing written for a failed start
