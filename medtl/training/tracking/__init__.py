"""Experiment trackers (MLflow, TensorBoard) as fit hooks: `runtime.track` / `--track`.

A tracker is one module here, a `Tracker` (base.py): a `FitHook` that logs every fit's epochs (auto's
candidates each as their own series), plus what a run adds at its end (final metrics with their intervals,
figures, the run folder). `tracked` opens the ones a config names for one run folder and closes them with the
run's outcome. Where each logged is recorded in the run folder's tracking.json, so later commands
(`medtl card`) add to the same run. A study's points are nested under one run of the study (`open_study`).
"""

from medtl.training.tracking.base import Tracker, Trackers  # noqa: F401
from medtl.training.tracking.runs import attach, end_study, open_study, require, tracked  # noqa: F401
