"""The run folder: every file a run writes, named in one place.

`medtl train` writes these; studies, tuning, prediction, export and the Python API read them through this
record, so no file name is spelled twice."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from medtl.core.errors import MedtlError


@dataclass(frozen=True)
class RunFolder:
    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    def __str__(self) -> str:
        return str(self.path)

    def __fspath__(self) -> str:
        return str(self.path)

    config = property(lambda self: self.path / "config.yaml")  # the resolved run config
    metrics = property(lambda self: self.path / "metrics.json")  # written last: a finished run has it
    history = property(lambda self: self.path / "history.csv")
    curves = property(lambda self: self.path / "curves.png")
    reliability = property(lambda self: self.path / "reliability.png")  # calibration of val and test
    confusion = property(lambda self: self.path / "confusion.png")
    checkpoint = property(lambda self: self.path / "checkpoint.pt")
    log = property(lambda self: self.path / "train.log")
    skipped = property(lambda self: self.path / "skipped.csv")  # unreadable images: path, reason
    audit = property(lambda self: self.path / "audit.txt")
    state = property(lambda self: self.path / "state.pt")  # per-epoch training state, for --resume
    cam_grid = property(lambda self: self.path / "cam_grid.png")
    lock = property(lambda self: self.path / "run.lock")  # held by the process writing the run
    auto = property(lambda self: self.path / "auto.json")  # strategy auto: every candidate, the choice and why
    # strategy auto, while it runs (for --resume): the budget used, the finished candidates, the one in progress
    auto_progress = property(lambda self: self.path / "auto-progress.json")
    auto_best = property(lambda self: self.path / "auto-best.pt")  # the best candidate so far: weights, scores
    tracking = property(lambda self: self.path / "tracking.json")  # runtime.track: where each tracker logged the run

    def candidate_state(self, strategy: str, size: int) -> Path:
        """Per-epoch training state of one auto candidate, for --resume."""
        return self.path / f"state-{strategy}-{size}.pt"

    def remove_run_state(self) -> None:
        """What only an unfinished run needs (state.pt, auto's progress), once the run is complete."""
        self.state.unlink(missing_ok=True)
        self.remove_auto_progress()

    def remove_auto_progress(self) -> None:
        for path in [self.auto_progress, self.auto_best, *self.path.glob("state-*.pt")]:
            path.unlink(missing_ok=True)
    image_keys = property(lambda self: self.path / "image_keys.json")  # train/val content digests, perceptual hashes

    def predictions(self, split: str) -> Path:
        return self.path / f"predictions_{split}.csv"

    def patient_predictions(self, split: str) -> Path:
        """Per patient key (pseudonymised unless revealed): written when the data name patients."""
        return self.path / f"predictions_{split}_patients.csv"

    def export(self, fmt: str) -> Path:
        return self.path / ("model.onnx" if fmt == "onnx" else "model.torchscript.pt")

    @property
    def finished(self) -> bool:
        return self.metrics.is_file()

    @property
    def started(self) -> bool:
        """`medtl train` began a run here (it writes config.yaml first), finished or not."""
        return self.config.is_file() or self.state.is_file() or self.auto_progress.is_file()

    def how_to_continue(self) -> str:
        """What to do with the unfinished run here (any strategy, auto included): `--resume`."""
        return f"continue it with `medtl train --resume {self.path}`"

    def require_finished(self) -> Path:
        """metrics.json, or one line: the run here did not finish, and how to continue it."""
        if not self.finished:
            raise MedtlError(f"{self.metrics} not found: the run in {self.path} did not finish; "
                             f"{self.how_to_continue()}")
        return self.metrics

    def require_checkpoint(self) -> Path:
        """checkpoint.pt, or one line: the run here did not finish (and how to go on), or this is no run folder."""
        if self.checkpoint.is_file():
            return self.checkpoint
        if self.started:
            raise MedtlError(f"the run in {self.path} did not finish (no {self.checkpoint.name}); "
                             f"{self.how_to_continue()}")
        raise MedtlError(f"{self.checkpoint} not found; pass a run folder written by `medtl train`")


@dataclass(frozen=True)
class StudyFolder:
    """`<out>/<name>` of a study: its spec, its run folders and its report."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    spec = property(lambda self: self.path / "study.yaml")
    runs = property(lambda self: self.path / "runs")
    figures = property(lambda self: self.path / "figures")
    tracking = property(lambda self: self.path / "tracking.json")  # the study's tracker run (MLflow's), by kind

    def run(self, name: str) -> RunFolder:
        return RunFolder(self.runs / name)
