"""The model of a run used on new images from Python: prediction rows (`Predictions`), Grad-CAM overlays and
exports, and the engine that runs the network. `medtl.Run`'s `predictor_on`, `predict`, `explain`, `cam_grid` and
`export` (medtl/api/run.py, where they are documented) call these with the run's predictor or folder; nothing
here knows `Run`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from medtl.core.errors import MedtlError

if TYPE_CHECKING:
    from medtl.deploy.predictor import Predictor

PathLike = str | Path


class Predictions(list):
    """One dict per readable image (path, predicted, prob_<class>...), plus `failed` {path: reason}."""

    def __init__(self, rows: list[dict], failed: dict[str, str], writer) -> None:
        super().__init__(rows)
        self.failed = failed
        self._writer = writer

    def to_csv(self, path: PathLike) -> Path:
        """Write the rows as CSV.

        Args:
            path: The file: path, predicted, one probability column per class, threshold, the shift and
                referral columns, error (unreadable files too).

        Returns:
            `path`.
        """
        self._writer(Path(path))
        return Path(path)


def check_engine(engine: str) -> str:
    """`engine`, when it is one medtl can run a network with (checked before the model loads)."""
    from medtl.models.engine import ENGINES

    if engine not in ENGINES:
        raise MedtlError(f"engine {engine!r}; valid: {', '.join(ENGINES)}")
    return engine


def with_engine(pred: "Predictor", engine: str) -> "Predictor":
    """`pred`, its network run by `engine` from the next batch."""
    if pred.engine != engine:
        pred.engine, pred.runner = engine, None
    return pred


def predict(pred: "Predictor", images: Sequence[PathLike] | PathLike, batch_size: int, progress: bool,
            coverage: float) -> Predictions:
    """`medtl.Run.predict`: rows of the readable images (with the shift and referral fields when the run kept
    its feature reference), the unreadable ones in `.failed`."""
    from medtl.data.sources import expand_inputs
    from medtl.deploy.predictions import EXTRA, predict_files, write_predictions
    from medtl.evaluation.conformal import check_coverage

    pred.coverage = check_coverage(coverage)
    found, failed = predict_files(pred, expand_inputs(as_list(images)), batch_size, progress)
    rows = [{"path": r["path"], "predicted": r["predicted"],
             **{f"prob_{c}": float(p) for c, p in zip(pred.classes, r["probabilities"])},
             **{key: r[key] for key in EXTRA if pred.reference is not None}} for r in found]
    return Predictions(rows, failed, lambda path: write_predictions(path, pred, found, failed))


def explain(pred: "Predictor", images: Sequence[PathLike] | PathLike, out: PathLike, method: str):
    """`medtl.Run.explain`: (written overlay PNGs, {unreadable path: reason})."""
    from medtl.data.sources import expand_inputs
    from medtl.deploy.explain import explain_files

    return explain_files(pred, expand_inputs(as_list(images)), Path(out), method)


def cam_grid(run_dir: Path, method: str) -> Path:
    """`medtl.Run.cam_grid`: cam_grid.png in the run folder."""
    from medtl.deploy.explain import report_grid

    return report_grid(run_dir, method)


def export(run_dir: Path, format: str, output: PathLike | None, images: Sequence[PathLike] | None,
           tolerance: float) -> tuple[Path, float]:
    """`medtl.Run.export`: (file, max |difference| of probabilities against PyTorch)."""
    from medtl.data.sources import expand_inputs
    from medtl.deploy.export import export as export_model

    files = [str(p) for p in expand_inputs(as_list(images))] if images else None
    return export_model(run_dir, format, output, files, tolerance)


def as_list(items: Sequence[PathLike] | PathLike) -> list[PathLike]:
    return [items] if isinstance(items, (str, Path)) else list(items)
