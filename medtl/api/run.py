"""`medtl.Run`: a run folder written by `medtl train`, what it recorded, and what can be done with its model:
predict, explain and export (medtl/api/model.py), re-score on data from anywhere and recalibrate
(deploy/evaluate.py, deploy/calibrated_run.py), and its model card. Re-exported by `medtl.api`."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from medtl.api import model as api_model
from medtl.api.model import Predictions
from medtl.api.research import card
from medtl.core.config import RunConfig, load_config
from medtl.core.runfolder import RunFolder

if TYPE_CHECKING:
    from medtl.deploy.evaluation_folder import Evaluation
    from medtl.deploy.predictor import Predictor
    from medtl.evaluation.records import RunMetrics

PathLike = str | Path


@dataclass(frozen=True)
class Run:
    """A run folder written by `medtl train`, and what can be done with the model in it."""

    folder: RunFolder

    def __init__(self, path: PathLike | RunFolder) -> None:
        object.__setattr__(self, "folder", path if isinstance(path, RunFolder) else RunFolder(path))

    @classmethod
    def load(cls, path: PathLike) -> "Run":
        """Open a finished run.

        Args:
            path: A run folder written by `medtl train` or `medtl.train`.

        Returns:
            The run.

        Raises:
            MedtlError: The run there did not finish (and how to continue it), or it is no run folder.
        """
        folder = RunFolder(path)
        folder.require_checkpoint()  # a killed run: "did not finish", and how to go on with it
        return cls(folder)

    @property
    def path(self) -> Path:
        """The run folder."""
        return self.folder.path

    @property
    def metrics(self) -> "RunMetrics":
        """The run's metrics.json as its record: `splits` (per split loss, accuracy, sensitivity, specificity,
        F1, G-mean, AUC, confusion matrix, 95 % intervals), `threshold` chosen on validation, `classes`,
        `patient_level`, ... (`RunMetrics`); `metrics["splits"]["test"]["auc"]` reads its JSON keys too, and
        `metrics.to_dict()` gives the JSON object."""
        from medtl.evaluation.records import RunMetrics

        return RunMetrics.of_run(self.folder)

    @property
    def config(self) -> RunConfig:
        """The resolved config the run was trained with."""
        return load_config(self.folder.config)

    @functools.cached_property
    def predictor(self) -> "Predictor":
        """The model with its classes, threshold and preprocessing, loaded once (checked against the digest
        its run recorded)."""
        from medtl.deploy.predictor import Predictor

        return Predictor.from_run(self.path)

    def predictor_on(self, engine: str) -> "Predictor":
        """The run's predictor, its network run by another engine from the next batch.

        Args:
            engine: auto (the fastest measured here), torch, openvino or onnxruntime.

        Returns:
            The run's `predictor`.

        Raises:
            MedtlError: An unknown engine (checked before the model loads).
        """
        engine = api_model.check_engine(engine)  # before the model loads
        return api_model.with_engine(self.predictor, engine)

    def predict(self, images: Sequence[PathLike] | PathLike, batch_size: int = 32,
                progress: bool = False, engine: str = "auto", coverage: float = 0.9) -> Predictions:
        """Score image or DICOM files with the run's preprocessing, threshold (and temperature).

        Args:
            images: Files, or folders searched recursively for images and DICOM files.
            batch_size: Images per forward pass.
            progress: Show progress.
            engine: What runs the network: auto (the fastest measured on this machine; an engine only
                when the pass repays exporting the model, or its export is cached), torch, openvino or
                onnxruntime (checked against PyTorch on the first batch; PyTorch when they disagree).
            coverage: Of the conformal prediction sets (calibrated on validation) that decide `refer`.

        Returns:
            One dict per readable image (`path`, `predicted`, `prob_<class>`, `unlike_percentile`,
            `unlike_training`, `prediction_set`, `refer`; the last four absent for a run made before medtl
            kept its feature reference); unreadable files, with the reason, in `.failed`; `.to_csv(path)` writes
            them all.
        """
        return api_model.predict(self.predictor_on(engine), images, batch_size, progress, coverage)

    def explain(self, images: Sequence[PathLike] | PathLike, out: PathLike = "explain",
                method: str = "gradcam") -> tuple[list[Path], dict[str, str]]:
        """Grad-CAM heat maps over images, as overlay PNGs.

        Args:
            images: Files, or folders searched recursively for images and DICOM files.
            out: The folder for the overlays.
            method: gradcam, gradcam++ or eigencam.

        Returns:
            (the overlays written, {unreadable path: reason}).
        """
        return api_model.explain(self.predictor, images, out, method)

    def cam_grid(self, method: str = "gradcam") -> Path:
        """Write cam_grid.png in the run folder: CAM overlays of test true positives, false positives and false
        negatives, for the run's report.

        Args:
            method: The CAM method, as `explain` takes it.

        Returns:
            The file.
        """
        return api_model.cam_grid(self.path, method)

    def export(self, format: str = "onnx", output: PathLike | None = None,
               images: Sequence[PathLike] | None = None, tolerance: float = 1e-4) -> tuple[Path, float]:
        """Export the model for deployment, with its preprocessing in the file's metadata.

        Args:
            format: onnx or torchscript.
            output: The file (default: model.onnx or model.torchscript.pt in the run folder).
            images: Images to check the export on (default: 8 seeded random images).
            tolerance: The largest |difference| of probabilities against PyTorch that is accepted.

        Returns:
            (the file, the max |difference| of probabilities against PyTorch).

        Raises:
            MedtlError: The export disagrees with PyTorch by more than `tolerance` (nothing is kept then).
        """
        return api_model.export(self.path, format, output, images, tolerance)

    def evaluate(self, data: PathLike, split: str = "test", progress: bool = False, **options: Any) -> "Evaluation":
        """Score the run on labelled data from anywhere, as training scored its test split.

        Args:
            data: Data in any layout `train` takes (a plain class-folder tree is scored whole).
            split: The split of `data` to score.
            progress: Show progress.
            **options: The fields of `EvaluateOptions` (medtl/deploy/options.py), by keyword:
                `output_dir`: write the evaluation folder here (metrics.json, predictions.csv, figures);
                `classes`: the data's class names mapped onto the run's, "0=NORMAL,1=PNEUMONIA" or a dict;
                `threshold`: an operating point chosen on the run's validation predictions (youden, f1, a
                number, "sensitivity>=0.95", "specificity>=0.90"), default the run's own threshold;
                `calibrate_fraction`: refit the threshold (and with `temperature` a temperature) on this
                stratified, seeded part of the data (patients and copies kept together), the rest scored
                before and after; `temperature`: refit a temperature on the calibration part too;
                `seed`: seed of the calibration split.

        Returns:
            An `Evaluation`: `metrics` (with 95 % intervals, calibration, per class), `operating_point`,
            `copies` of the run's training/validation images and `without_copies`, `recalibration`;
            `evaluation["auc"]` reads `metrics`.

        Raises:
            TypeError: A keyword that is not a field of `EvaluateOptions`.
        """
        from medtl.deploy.evaluate import evaluate
        from medtl.deploy.options import EvaluateOptions

        return evaluate(self.path, data, split, EvaluateOptions(**options), progress)

    def calibrate(self, data: PathLike, split: str = "test", *, output_dir: PathLike | None = None,
                  name: str | None = None, classes: str | dict[str, str] | None = None, threshold: str | None = None,
                  temperature: bool = False, progress: bool = False) -> "Run":
        """Refit the threshold (and with `temperature` the temperature) on labelled local images.

        Args:
            data: Labelled local images in any layout `train` takes.
            split: The split of `data` to fit on.
            output_dir: The parent folder of the new run (default: beside this one).
            name: The new run folder's name (default: `<run>-calibrated`).
            classes: The data's class names mapped onto the run's, "0=NORMAL,1=PNEUMONIA" or a dict.
            threshold: The operating point to fit (youden, f1, a number, "sensitivity>=0.95", ...); default
                the run's own rule.
            temperature: Also refit the temperature.
            progress: Show progress.

        Returns:
            A new run (same weights; new threshold and temperature; `metrics["calibrated_from"]` says from what),
            in `output_dir` (default: beside this one) named `name` (default: `<run>-calibrated`).
        """
        from medtl.deploy.calibrated_run import calibrate
        from medtl.deploy.options import CalibrateOptions

        options = CalibrateOptions(output_dir, name, classes, threshold, temperature)
        return Run(calibrate(self.path, data, split, options, progress))

    def card(self, **options: Any) -> dict[str, Path]:
        """Write the run's model card (model_card.md and .html) and the reporting checklists.

        Args:
            **options: As `medtl.card` takes them: intended_use, evaluations, output_dir, rescan, target_width.

        Returns:
            {"card_md", "card_html", "checklist_claim_md", ...: path}.
        """
        return card(self.path, **options)

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"
