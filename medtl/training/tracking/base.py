"""The tracker protocol, the group a run holds, and what every tracker logs (config, epochs, final metrics)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from medtl.core.config import RunConfig, to_dict
from medtl.core.runfolder import RunFolder
from medtl.evaluation.records import RunMetrics
from medtl.training.fitstate import Events, FitHook, FitState

FIGURES = ("curves", "reliability", "confusion")  # the run folder's figures, by RunFolder property


class Tracker(FitHook):
    """One tracker of one run: the fit events, and the run's end. `target` is what followed `kind:` in
    `runtime.track` ("" for the default store beside the run folders)."""

    kind = ""

    def record(self) -> dict:
        """Where this tracker logs the run (tracking.json)."""
        raise NotImplementedError

    def after_run(self, folder: RunFolder, metrics: RunMetrics) -> None:
        """The finished run: final metrics, figures, the run folder."""

    def add_files(self, paths: list[Path], under: str) -> None:
        """Files written after the run (the card) added to it."""

    def close(self, status: str) -> None:
        """The run ended: FINISHED, FAILED or KILLED."""


class Trackers(Events):
    """The trackers of one run: each fit event passed to every one (`Events`), and the run's end."""

    def __init__(self, trackers: list[Tracker]):
        super().__init__(trackers)

    def __bool__(self) -> bool:
        return bool(self.hooks)

    def after_run(self, folder: RunFolder, metrics: RunMetrics) -> None:
        for t in self.hooks:
            t.after_run(folder, metrics)


def flat_config(cfg: RunConfig) -> dict[str, str]:
    """The resolved config as dotted keys and text values (the trackers' parameters)."""
    out: dict[str, str] = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            out[prefix] = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
    walk("", to_dict(cfg))
    return out


def epoch_values(state: FitState) -> dict[str, float]:
    """The last epoch's history row, its numbers only (epoch is the step)."""
    row = state.history[-1]
    return {k: float(v) for k, v in row.items() if k != "epoch" and isinstance(v, (int, float))}


def final_values(metrics: RunMetrics) -> dict[str, float]:
    """Each split's scalar metrics and their 95 % interval ends (`test_auc`, `test_auc_ci95_lo`, ...), the
    threshold and the best epoch."""
    out = {"best_epoch": float(metrics.best_epoch), "threshold": float(metrics.threshold),
           "train_seconds": float(metrics.train_seconds)}
    for split, report in metrics.splits.items():
        for key, value in report.items():
            if _number(value):
                out[f"{split}_{key}"] = float(value)
        for key, ends in (report.get("ci95") or {}).items():
            if isinstance(ends, (list, tuple)) and len(ends) == 2 and all(_number(e) for e in ends):
                out[f"{split}_{key}_ci95_lo"], out[f"{split}_{key}_ci95_hi"] = float(ends[0]), float(ends[1])
    return out


def figures(folder: RunFolder) -> list[Path]:
    return [path for name in FIGURES if (path := getattr(folder, name)).is_file()]


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
