"""What a run folder holds besides the checkpoint: metrics JSON, per-epoch CSV, curves PNG, config, log."""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path

import numpy as np

from medtl.core.io import atomic_write, clean
from medtl.evaluation.metrics import class_table, decide

log = logging.getLogger(__name__)


def write_history(path: Path, history: list[dict]) -> None:
    if not history:
        return
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(history[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(clean(history))
    atomic_write(path, buf.getvalue())


def plot_curves(path: Path, history: list[dict], title: str) -> None:
    """Loss (train, val) and validation accuracy/AUC per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(epochs, [r["train_loss"] for r in history], label="train")
    ax1.plot(epochs, [r["val_loss"] for r in history], label="validation")
    ax1.set(xlabel="epoch", ylabel="loss", title="loss")
    ax1.legend()
    ax2.plot(epochs, [r["val_accuracy"] for r in history], label="val accuracy (threshold 0.5)")
    ax2.plot(epochs, [r["val_auc"] for r in history], label="val ROC-AUC")
    ax2.set(xlabel="epoch", ylabel="score", title="validation", ylim=(0, 1.02))
    ax2.legend()
    fig.suptitle(title)
    fig.tight_layout()
    try:
        atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=100))
    finally:
        plt.close(fig)


def format_metrics(name: str, m: dict) -> str:
    """One line of the headline metrics; undefined values print as 'undefined'."""
    def f(key: str) -> str:
        value = clean(m.get(key))
        return "undefined" if value is None else f"{value:.4f}"
    keys = ("accuracy", "auc", "sensitivity", "specificity", "precision", "f1", "gmean", "loss")
    return f"{name}: " + ", ".join(f"{k} {f(k)}" for k in keys)


def write_predictions(path: Path, refs: list[str], labels, probs, classes: list[str], threshold: float) -> None:
    """Per-image results of a split: path, true label, predicted label, one probability column per class."""
    table = class_table(probs)
    predicted = decide(table, threshold)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path", "label", "predicted", *[f"prob_{c}" for c in classes]])
    for ref, y, k, row in zip(refs, labels, predicted, table):
        w.writerow([ref, classes[int(y)], classes[int(k)], *[f"{v:.6f}" for v in row]])
    atomic_write(path, buf.getvalue())
