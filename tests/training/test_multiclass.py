"""More than two classes, end to end: per-class metrics, the printed summary, figures and a study report."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import medtl
from medtl.evaluation.report import format_metrics


def three_classes(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for split, n in (("train", 18), ("test", 6)):
        for c, value in enumerate((40, 130, 220)):
            folder = root / split / f"c{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(np.clip(rng.normal(value, 15, (24, 24)), 0, 255).astype(np.uint8)).save(
                    folder / f"{i}.png")
    return root


@pytest.mark.slow
def test_a_three_class_study_reports_every_class(tmp_path, cache_dir):
    data = three_classes(tmp_path / "data")
    spec = tmp_path / "s.yaml"
    spec.write_text(f"name: three\nout: {tmp_path / 'out'}\nbase:\n  data: {{path: {data}, image_size: 32}}\n"
                    "  train: {epochs: 2, batch_size: 16, bootstrap: 200}\n"
                    "grid:\n  backbone: [efficientnet_lite0]\n  strategy: [linear, scratch]\n  seed: [0]\n")
    report = medtl.study(spec)
    md = report.with_suffix(".md").read_text()
    assert md.count("| efficientnet_lite0 |") == 2 and "AUC difference" in md
    for name in ("roc.png", "confusion.png", "metrics.png"):
        assert (report.parent / "figures" / name).stat().st_size > 5000
    run = medtl.Run.load(report.parent / "runs" / "efficientnet_lite0-linear-s0")
    test = run.metrics["splits"]["test"]
    assert set(test["per_class"]) == {"c0", "c1", "c2"} and len(test["confusion_matrix"]) == 3
    assert set(test["ci95"]) == {"accuracy", "sensitivity", "specificity", "f1", "gmean", "auc"}
    line = format_metrics("test", test)
    assert "per class recall c0" in line and "ECE" in line and "\n" not in line
    assert run.folder.confusion.stat().st_size > 5000 and run.folder.reliability.stat().st_size > 5000
