"""The cluster (patient) bootstrap: where a patient gives several images, the images are not independent, and an
interval that resamples images is too narrow. Each resample draws whole patients (within the class of their
images' most frequent label, as the image bootstrap draws within each class), and a patient's images all take
the patient's draw count as their weight (`weighted.over_replicates` with an index from image to patient)."""

from __future__ import annotations

import numpy as np

from medtl.evaluation.weighted import div, nanmean, one_vs_rest, over_replicates


def units(clusters: list[str], y: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(each image's cluster index, each cluster's label: its images' most frequent one, the lower on a tie)."""
    _, index = np.unique(np.asarray(clusters, dtype=str), return_inverse=True)
    counts = np.zeros((int(index.max()) + 1, n_classes), dtype=np.int64)
    np.add.at(counts, (index, y), 1)
    return index, counts.argmax(1)


def clustered(clusters: list[str] | None, n: int) -> bool:
    """Whether `clusters` groups some images (a key with two or more): else the image bootstrap is the same."""
    return clusters is not None and len(clusters) == n and len(set(clusters)) < n


def cluster_values(y: np.ndarray, table: np.ndarray, pred: np.ndarray, clusters: list[str], resamples: int,
                   seed: int) -> dict[str, np.ndarray]:
    """{metric: (resamples,) values} of `uncertainty.intervals`' metrics under a cluster bootstrap."""
    index, label = units(clusters, y, table.shape[1])
    return over_replicates(label, resamples, seed, lambda w: split_values(w, y, table, pred), index)


def cluster_class_values(y: np.ndarray, table: np.ndarray, pred: np.ndarray, clusters: list[str], resamples: int,
                         seed: int) -> dict[int, dict[str, np.ndarray]]:
    """{class: {metric: (resamples,) values}} of `uncertainty.class_intervals` under a cluster bootstrap."""
    index, label = units(clusters, y, table.shape[1])

    def per_class(w: np.ndarray) -> dict:
        return {c: class_values(w, y == c, pred == c, table[:, c]) for c in range(table.shape[1])}

    flat = over_replicates(label, resamples, seed, lambda w: _flatten(per_class(w)), index)
    out: dict[int, dict[str, np.ndarray]] = {}
    for (c, name), v in flat.items():
        out.setdefault(c, {})[name] = v
    return out


def _flatten(nested: dict) -> dict:
    return {(c, name): v for c, values in nested.items() for name, v in values.items()}


def split_values(w: np.ndarray, y: np.ndarray, table: np.ndarray, pred: np.ndarray) -> dict[str, np.ndarray]:
    """The interval metrics under weights `w` (B, n); the same definitions as `uncertainty`'s (binary: class 1
    positive, precision and npv too; multiclass: macro averages over the classes with a defined value)."""
    accuracy = div(w @ (pred == y).astype(w.dtype), w.sum(1))
    if table.shape[1] == 2:
        m = class_values(w, y == 1, pred == 1, table[:, 1])
        sens, spec = m["recall"], m["specificity"]
        return {"accuracy": accuracy, "sensitivity": sens, "specificity": spec, "f1": m["f1"],
                "gmean": np.sqrt(sens * spec), "auc": m["auc"], "precision": m["precision"], "npv": m["npv"]}
    per = [class_values(w, y == c, pred == c, table[:, c]) for c in range(table.shape[1])]
    recall = [v["recall"] for v in per]
    return {"accuracy": accuracy, "sensitivity": nanmean(recall),
            **{m: nanmean([v[m] for v in per]) for m in ("specificity", "f1", "auc")},
            "gmean": np.prod(recall, 0) ** (1 / table.shape[1])}


def class_values(w: np.ndarray, positive: np.ndarray, said: np.ndarray, score: np.ndarray) -> dict[str, np.ndarray]:
    """One class against the rest under weights `w`: `uncertainty.CLASS_METRICS`."""
    m = one_vs_rest(w, positive, said, score)
    rec, prec = m["sensitivity"], m["precision"]
    return {"precision": prec, "npv": m["npv"], "recall": rec, "specificity": m["specificity"],
            "f1": div(2 * prec * rec, prec + rec), "auc": m["auc"]}
