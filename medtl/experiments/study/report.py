"""Figures and files of a study report (report.csv, report.md, report.html, figures/*.png)."""

from __future__ import annotations

import csv
import html
import math
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

from medtl.experiments.study.compare import (BOOTSTRAP, METRICS, SCRATCH, Run, best_marks, by_group,  # noqa: E402
                                             is_reference, label, load_runs, paired_tests, summarize)
from medtl.core.errors import MedtlError  # noqa: E402
from medtl.core.io import atomic_write, make_dir, write_csv  # noqa: E402
from medtl.core.runfolder import RunFolder, StudyFolder  # noqa: E402
from medtl.evaluation.figures import save_figure  # noqa: E402
from medtl.evaluation.weighted import over_replicates, percentile_interval, weighted_metrics  # noqa: E402
from medtl.experiments.study.subgroups import subgroup_table  # noqa: E402

POOLED = ("accuracy", "sensitivity", "specificity", "precision", "auc")  # intervals over all seeds' predictions
HEADLINE = ("accuracy", "precision", "sensitivity", "f1", "gmean", "auc")
FIGURES = {"curves.png": "Training curves (mean over seeds): dashed = the reference configuration",
           "metrics.png": "Test metrics by configuration (mean ± std over seeds)",
           "roc.png": "Test ROC curves (probabilities averaged over seeds)",
           "confusion.png": "Test confusion matrices (summed over seeds)"}


def write_report(study_root: Path, command: str = "") -> Path:
    meta, runs = load_runs(study_root)
    if not runs:
        raise MedtlError(f"{study_root} has no finished runs to report; run `medtl study CONFIG` first")
    reference = {k: str(v) for k, v in (meta.get("compare_to") or SCRATCH).items()}
    rows, tests = summarize(runs), paired_tests(runs, reference)
    for row, members in zip(rows, by_group(runs).values()):  # summarize's rows are by_group's, in its order
        row.update(pooled_columns(members))
    figures = StudyFolder(study_root).figures
    make_dir(figures)
    _curves(runs, figures / "curves.png", reference)
    _metric_bars(rows, figures / "metrics.png")
    _rocs(runs, figures / "roc.png", reference)
    _confusions(runs, figures / "confusion.png")
    write_csv(study_root / "report.csv", list(rows[0]), rows)
    tables = _tables(rows, tests)
    tables["subgroups"] = subgroup_table(runs)
    meta = {**meta, "reference": label(tuple(reference.items()))}
    atomic_write(study_root / "report.md", _markdown(meta, tables, command))
    atomic_write(study_root / "report.html", _html(meta, tables, command))
    return study_root / "report.html"


def pooled_columns(members: list[Run], resamples: int = BOOTSTRAP, seed: int = 0) -> dict[str, str]:
    """'{metric} pooled, 95% CI' -> 'value [low, high]': every seed's test predictions of one configuration pooled
    (read from each run's predictions_test.csv), with a bootstrap that resamples test images, not predictions:
    an image and all the seeds' predictions of it are drawn together, within its class. The per-seed spread is
    the table's mean ± sd."""
    refs = [_test_refs(r.folder) for r in members]
    cluster: dict[str, int] = {}
    index = np.array([cluster.setdefault(ref, len(cluster)) for run_refs in refs for ref in run_refs])
    y = np.concatenate([r.labels for r in members])
    table = np.concatenate([r.probs for r in members])
    predicted = np.concatenate([r.predicted for r in members])
    image_y = np.zeros(len(cluster), dtype=int)
    image_y[index] = y
    observed = weighted_metrics(np.ones((1, len(y))), y, table, predicted)
    boot = over_replicates(image_y, resamples, seed, lambda w: weighted_metrics(w, y, table, predicted), index)
    out = {}
    for m in POOLED:
        value, ci = float(observed[m][0]), percentile_interval(boot[m])
        out[f"{m} pooled, 95% CI"] = ("n/a" if not np.isfinite(value) else f"{value:.3f}"
                                      + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""))
    return out


def _test_refs(folder: Path) -> list[str]:
    with open(RunFolder(folder).predictions("test"), newline="") as f:
        return [row["path"] for row in csv.DictReader(f)]


def _styles(groups, reference: dict[str, str]) -> dict[tuple, dict]:
    """Dashed for the reference configuration. Colours: one per setting apart from the reference's keys (a
    configuration and its reference share one) where that tells the others apart, else one per configuration."""
    def base(g):
        return tuple((k, v) for k, v in g if k not in reference)
    others = [g for g in groups if not is_reference(g, reference)]
    keyed = len({base(g) for g in others}) == len(others)
    keys = list(dict.fromkeys(base(g) if keyed else g for g in groups))
    colours = plt.get_cmap("tab10")
    return {g: {"color": colours(keys.index(base(g) if keyed else g) % 10),
                "linestyle": "--" if is_reference(g, reference) else "-"} for g in groups}


def _curves(runs: list[Run], path: Path, reference: dict[str, str]) -> None:
    groups = by_group(runs)
    styles = _styles(groups, reference)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for g, members in groups.items():
        for ax, key in ((ax1, "train_loss"), (ax2, "val_accuracy")):
            length = min(len(r.history) for r in members)
            curve = np.nanmean([[h[key] for h in r.history[:length]] for r in members], axis=0)
            ax.plot(range(1, length + 1), curve, label=label(g), **styles[g])
    for ax in (ax1, ax2):
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax1.set(xlabel="epoch", ylabel="training loss", title="training loss")
    ax2.set(xlabel="epoch", ylabel="validation accuracy", title="validation accuracy", ylim=(0, 1.02))
    ax2.legend(fontsize=7, loc="lower right")
    save_figure(fig, path, dpi=90)


def _metric_bars(rows: list[dict], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(max(8, 1.6 * len(rows) + 4), 4.5))
    width = 0.8 / len(rows)
    x = np.arange(len(HEADLINE))
    for i, row in enumerate(rows):
        means = [row[f"{m}_mean"] for m in HEADLINE]
        errs = [0 if math.isnan(row[f"{m}_std"]) else row[f"{m}_std"] for m in HEADLINE]
        name = " ".join(str(v) for k, v in row.items() if k not in ("seeds",) and not k.endswith(("_mean", "_std")))
        ax.bar(x + i * width, means, width, yerr=errs, label=name, capsize=2)
    ax.set_xticks(x + 0.4 - width / 2, HEADLINE)
    ax.set(ylim=(0, 1.05), ylabel="test score")
    ax.legend(fontsize=7, ncol=2, loc="lower left")
    save_figure(fig, path, dpi=90)


def _rocs(runs: list[Run], path: Path, reference: dict[str, str]) -> None:
    groups = by_group(runs)
    styles = _styles(groups, reference)
    fig, ax = plt.subplots(figsize=(6, 6))
    for g, members in groups.items():
        probs = np.mean([r.probs for r in members], axis=0)
        if probs.shape[1] == 2:
            fpr, tpr, _ = roc_curve(members[0].labels, probs[:, 1])
        else:  # one curve per configuration: the micro-average over one-vs-rest decisions
            fpr, tpr, _ = roc_curve(np.eye(probs.shape[1])[members[0].labels].ravel(), probs.ravel())
        ax.plot(fpr, tpr, label=label(g), **styles[g])
    ax.plot([0, 1], [0, 1], color="grey", linewidth=0.8)
    title = "test ROC" if runs[0].probs.shape[1] == 2 else "test ROC (micro-average, one class vs the rest)"
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title=title)
    ax.legend(fontsize=7, loc="lower right")
    save_figure(fig, path, dpi=90)


def _confusions(runs: list[Run], path: Path) -> None:
    groups = by_group(runs)
    cols = min(4, len(groups))
    rows = math.ceil(len(groups) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (g, members) in zip(axes.flat, groups.items()):
        k = len(members[0].classes)
        cm = sum(np.bincount(r.labels * k + r.predicted, minlength=k * k).reshape(k, k) for r in members)
        ax.axis("on")
        ax.imshow(cm, cmap="Blues")
        for (i, j), v in np.ndenumerate(cm):
            ax.text(j, i, str(v), ha="center", va="center", color="black" if v < cm.max() / 2 else "white")
        ax.set_xticks(range(k), members[0].classes, fontsize=7)
        ax.set_yticks(range(k), members[0].classes, fontsize=7)
        ax.set_title(label(g), fontsize=8)
        ax.set(xlabel="predicted", ylabel="true")
    save_figure(fig, path, dpi=90)


def _tables(rows: list[dict], tests: list[dict]) -> dict:
    """Cells as text: the configuration table (best per column marked) and the paired tests."""
    marks = best_marks(rows)
    keys = [k for k in rows[0] if not k.endswith(("_mean", "_std", "95% CI"))]
    intervals = [k for k in rows[0] if k.endswith("95% CI")]
    head = keys + list(METRICS) + [f"test {k} (seeds' predictions pooled)" for k in intervals]
    body = []
    for i, row in enumerate(rows):
        cells = [(str(row[k]), False) for k in keys]
        for m in METRICS:
            mean, std = row[f"{m}_mean"], row[f"{m}_std"]
            fmt = ".0f" if m == "train_seconds" else ".3f"
            text = "n/a" if math.isnan(mean) else f"{mean:{fmt}}" + ("" if math.isnan(std) else f" ± {std:{fmt}}")
            cells.append((text, i in marks.get(m, ())))
        body.append(cells + [(row[k], False) for k in intervals])
    test_head = ["configuration", "reference", "seeds", "McNemar p (per seed)", "AUC difference [95 % bootstrap CI]"]
    test_body = [[(t["configuration"], False), (t["reference"], False), (str(t["seeds"]), False),
                  (", ".join(f"{p:.3g}" for p in t["mcnemar_p"]), False),
                  (f"{t['auc_difference']:+.3f} [{t['auc_ci_low']:+.3f}, {t['auc_ci_high']:+.3f}]", False)]
                 for t in tests]
    return {"main": (head, body), "tests": (test_head, test_body)}


SUBGROUPS = "Test metrics per subgroup (95 % intervals; the largest gap with its paired bootstrap interval)"


def _markdown(meta: dict, tables: dict, command: str) -> str:
    def table(head, body):
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(f"**{t}**" if best else t for t, best in row) + " |" for row in body]
        return "\n".join(lines)
    parts = [f"# Study {meta['name']}", _intro(meta, command), "## Test metrics, then validation's AUC and loss (mean ± std over seeds; best in bold)",
             table(*tables["main"]), f"## Each configuration vs {meta['reference']}, paired on the same test images", table(*tables["tests"])]
    if tables.get("subgroups"):
        parts += [f"## {SUBGROUPS}", table(*tables["subgroups"])]
    parts += [f"### {caption}\n\n![{caption}](figures/{name})" for name, caption in FIGURES.items()]
    if meta.get("skipped"):
        parts.append("## Runs left out\n\n" + "\n".join(f"- {s}" for s in meta["skipped"]))
    return "\n\n".join(parts) + "\n"


def _intro(meta: dict, command: str) -> str:
    data = meta["base"]["data"]["path"]
    grid = "; ".join(f"{k}: {', '.join(map(str, v))}" for k, v in meta["grid"].items())
    text = f"Data: `{data}`. Grid: {grid}."
    return text + (f"\n\nCommand: `{command}`" if command else "")


def _html(meta: dict, tables: dict, command: str) -> str:
    def table(head, body):
        th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
        trs = "".join("<tr>" + "".join(f"<td{' class=best' if best else ''}>{html.escape(t)}</td>" for t, best in row)
                      + "</tr>" for row in body)
        return f"<table><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>"
    figs = "".join(f"<figure><img src='figures/{n}' alt='{html.escape(c)}'><figcaption>{html.escape(c)}"
                   "</figcaption></figure>" for n, c in FIGURES.items())
    skipped = "".join(f"<li>{html.escape(s)}</li>" for s in meta.get("skipped") or [])
    intro = html.escape(_intro(meta, command)).replace("\n\n", "<br>")
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>Study {html.escape(meta['name'])}"
            "</title><style>body{font-family:system-ui,sans-serif;margin:2rem}table{border-collapse:collapse;"
            "font-size:.85rem}td,th{border:1px solid #ccc;padding:.25rem .5rem}.best{font-weight:700;"
            "background:#e8f5e9}img{max-width:100%}figure{margin:1.5rem 0}</style></head><body>"
            f"<h1>Study {html.escape(meta['name'])}</h1><p>{intro}</p>"
            f"<h2>Test metrics, then validation's AUC and loss (mean ± std over seeds; best highlighted)</h2>{table(*tables['main'])}"
            f"<h2>Each configuration vs {html.escape(meta['reference'])}, paired on the same test images</h2>{table(*tables['tests'])}"
            + (f"<h2>{html.escape(SUBGROUPS)}</h2>{table(*tables['subgroups'])}" if tables.get("subgroups") else "")
            + f"{figs}"
            + (f"<h2>Runs left out</h2><ul>{skipped}</ul>" if skipped else "") + "</body></html>\n")
