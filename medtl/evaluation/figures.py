"""A run's figures beside its metrics: training curves, the reliability diagram (are the probabilities
calibrated?) and the confusion matrices, one panel per evaluated split."""

from __future__ import annotations

import logging
import textwrap
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from medtl.core.io import atomic_write  # noqa: E402
from medtl.evaluation.fonts import drawable  # noqa: E402

log = logging.getLogger(__name__)


def save_figure(fig, path: Path, dpi: int = 100) -> None:
    """Lay out, write atomically as PNG, and free the figure whatever happens. Warnings matplotlib gives while
    drawing (a glyph missing from every font, a layout it cannot fit) are caught here, for this figure only,
    and logged as one line: they never reach stderr as Python warnings."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            _fit_titles(fig)
            fig.tight_layout()
            atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=dpi))
    finally:
        plt.close(fig)
    for quiet in (False, True):  # deprecations inside the plotting libraries are for developers: debug level
        messages = list(dict.fromkeys(" ".join(str(w.message).split()) for w in caught
                                      if issubclass(w.category, DeprecationWarning) == quiet))
        if messages:
            log.log(logging.DEBUG if quiet else logging.WARNING, "%s: %d drawing warning(s), e.g. %s", path.name,
                    len(messages), messages[0])


def _fit_titles(fig) -> None:
    """Wrap every panel's title onto more lines until it is no wider than its panel, so that a long split or
    run name is never cut off at the edges (the figure's own title is wrapped by `_suptitle`)."""
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        _wrap(ax.title, renderer, 1.05 * ax.bbox.width)


def _wrap(artist, renderer, width: float) -> None:
    """Fewer characters per line, until the text fits `width` pixels (or a line is down to 8 characters)."""
    text = " ".join(artist.get_text().split())
    chars = len(text)
    while chars > 8 and artist.get_window_extent(renderer).width > width:
        chars = max(8, int(chars * 0.85))
        artist.set_text("\n".join(textwrap.wrap(text, chars)))


def plot_curves(path: Path, history: list[dict], title: str) -> None:
    """Loss (train, val) and validation accuracy/AUC per epoch."""
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
    _suptitle(fig, title)
    save_figure(fig, path)


def plot_reliability(path: Path, splits: dict[str, dict], title: str) -> None:
    """Observed rate against mean predicted probability per bin (the diagonal is perfect calibration); the
    marker area follows the number of images in the bin."""
    shown = {s: m for s, m in splits.items() if "calibration" in m}
    fig, axes = plt.subplots(1, len(shown), figsize=(4.2 * len(shown), 4.2), squeeze=False)
    for ax, (split, m) in zip(axes[0], shown.items()):
        cal = m["calibration"]
        bins = np.array(cal["bins"]) if cal["bins"] else np.zeros((0, 3))
        ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--", label="perfectly calibrated")
        ax.plot(bins[:, 0], bins[:, 1], color="C0", lw=1)
        ax.scatter(bins[:, 0], bins[:, 1], s=20 + 200 * bins[:, 2] / max(1, bins[:, 2].max()), color="C0",
                   label="this run")
        two = len(m.get("confusion_matrix", [])) == 2
        ax.set(xlim=(-0.03, 1.03), ylim=(-0.03, 1.03), xlabel="predicted probability" + (" (positive)" if two else " (top class)"),
               ylabel="observed rate" if two else "accuracy",
               title=f"{split}: ECE {cal['ece']:.3f}, Brier {cal['brier']:.3f} (n={m['n']})")
        ax.legend(loc="upper left", fontsize=8)
    _suptitle(fig, f"{title}: reliability")
    save_figure(fig, path)


def plot_confusions(path: Path, splits: dict[str, dict], classes: list[str]) -> None:
    """Counts per (true, predicted) class, at the run's threshold. Class names are drawn with a font that has
    their glyphs when one is installed (e.g. a CJK font); a character no font has is written escaped (\\u80ba)
    rather than as an empty box, with one warning line naming the font to install."""
    labels, families = drawable(classes, path.name)
    fig, axes = plt.subplots(1, len(splits), figsize=(3.2 + 0.5 * len(classes)) * np.array([len(splits), 1]),
                             squeeze=False)
    for ax, (split, m) in zip(axes[0], splits.items()):
        cm = np.array(m["confusion_matrix"])
        ax.imshow(cm, cmap="Blues")
        for (i, j), v in np.ndenumerate(cm):
            ax.text(j, i, str(v), ha="center", va="center", color="white" if v > cm.max() / 2 else "black")
        ax.set(xticks=range(len(classes)), yticks=range(len(classes)), xlabel="predicted", ylabel="true",
               title=f"{split} (n={m['n']})")
        ax.set_xticklabels(labels, fontfamily=families, parse_math=False)  # a '$' in a name is not TeX
        ax.set_yticklabels(labels, fontfamily=families, parse_math=False)
        ax.tick_params(axis="x", labelrotation=45 if len(classes) > 3 else 0)
    save_figure(fig, path)


def _suptitle(fig, title: str) -> None:
    """A figure title (it holds the run name) drawn as `plot_confusions` draws class names, wrapped to the
    figure's width."""
    (text,), families = drawable([title], "figure title")
    _wrap(fig.suptitle(text, fontfamily=families, parse_math=False), fig.canvas.get_renderer(),
          0.96 * fig.bbox.width)


def plot_roc(path: Path, y: np.ndarray, probs: np.ndarray, classes: list[str], threshold: float | None,
             title: str) -> None:
    """ROC curve (binary: of the positive class, with the operating point at `threshold` marked; multiclass:
    one-vs-rest per class, the prediction being the argmax)."""
    from sklearn.metrics import roc_auc_score, roc_curve

    y = np.asarray(y).astype(int)
    table = np.stack([1 - probs, probs], 1) if np.ndim(probs) == 1 else np.asarray(probs)
    shown = [1] if table.shape[1] == 2 else range(table.shape[1])
    labels, families = drawable([classes[k] for k in shown], path.name)
    fig, ax = plt.subplots(figsize=(4.8, 4.6))
    ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--", label="chance")
    for k, label in zip(shown, labels):
        if len(set((y == k).tolist())) < 2:
            continue  # a class absent (or alone) here has no curve
        fpr, tpr, _ = roc_curve(y == k, table[:, k])
        ax.plot(fpr, tpr, lw=1.5, label=f"{label} (AUC {roc_auc_score(y == k, table[:, k]):.3f})")
    if table.shape[1] == 2 and threshold is not None and len(set(y.tolist())) == 2:
        positive = table[:, 1] >= threshold
        sens, fpr_at = positive[y == 1].mean(), positive[y == 0].mean()
        ax.scatter([fpr_at], [sens], s=60, color="C3", zorder=3,
                   label=f"operating point {threshold:.3f}: sens {sens:.3f}, spec {1 - fpr_at:.3f}")
    ax.set(xlim=(-0.02, 1.02), ylim=(-0.02, 1.02), xlabel="1 - specificity", ylabel="sensitivity")
    leg = ax.legend(loc="lower right", fontsize=8)
    for text in leg.get_texts():
        text.set_fontfamily(families)
    _suptitle(fig, f"{title}: ROC (n={len(y)})")
    save_figure(fig, path)


def plot_decision_curve(path: Path, curves: dict[str, np.ndarray], threshold: float | None, title: str) -> None:
    """Net benefit against threshold probability for the model, treat-all and treat-none
    (`operating.net_benefit`), the model's threshold marked."""
    fig, ax = plt.subplots(figsize=(5.6, 4.2))
    pt = curves["threshold"]
    ax.plot(pt, curves["model"], color="C0", lw=1.8, label="model")
    ax.plot(pt, curves["treat_all"], color="0.4", lw=1, label="treat all")
    ax.plot(pt, curves["treat_none"], color="0.2", lw=1, ls=":", label="treat none")
    if threshold is not None:
        ax.axvline(threshold, color="C3", lw=1, ls="--", label=f"operating point {threshold:.3f}")
    top = max(float(np.max(curves["model"])), float(np.max(curves["treat_all"])), 0.01)
    ax.set(xlim=(0, 1), ylim=(-0.05 * top - 0.02, top * 1.1), xlabel="threshold probability", ylabel="net benefit")
    ax.legend(fontsize=8)
    _suptitle(fig, f"{title}: decision curve")
    save_figure(fig, path)
