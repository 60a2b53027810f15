"""medtl from Python: the same operations as the command line, which is a thin layer over this module.

    import medtl
    run = medtl.train("data/chest_xray", strategy="linear", epochs=5, image_size=128)
    run.metrics["splits"]["test"]["auc"]
    rows = run.predict(["new/xray1.png", "new/xray2.dcm"])     # list of dicts; pandas.DataFrame(rows) works
    run.export("onnx")

Settings are keyword arguments: a flag name (`epochs`, `image_size`, `lr`, `seed`, ...), a field name found
in one config section only (`batch_size`, `val_fraction`, ...), or a dotted key (`**{"train.lr": 0.01}`).
Every value is checked when the config is made, before anything is written.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from medtl.api_studies import audit, card, card_template, report, study, tune
from medtl.core.config import RunConfig, apply_overrides, load_config, make_config, overrides_of
from medtl.core.errors import MedtlError
from medtl.core.runfolder import RunFolder

if TYPE_CHECKING:
    from medtl.deploy.evaluation_folder import Evaluation

log = logging.getLogger(__name__)
PathLike = str | Path


@dataclass(frozen=True)
class BackboneInfo:
    """One backbone of medtl's registry, as `medtl backbones` lists it.

    Attributes:
        name: The name `--backbone` takes.
        family: The architecture family (`efficientnet_lite`, `resnet`, ...).
        input_size: The image size in px it was pretrained at (the default `--image-size`).
        feature_dim: The width of the features the new head receives.
        default_weights: The weights `--weights default` loads (`package` or `imagenet`).
        offline_sources: Where its ImageNet weights load from without a network (`package`, `hub cache`);
            empty when they would need a download.
    """

    name: str
    family: str
    input_size: int
    feature_dim: int
    default_weights: str
    offline_sources: tuple[str, ...]


def list_backbones() -> list[BackboneInfo]:
    """Every backbone medtl can build, in registry order, with where its pretrained weights come from.

    Returns:
        One `BackboneInfo` per backbone, e.g. `[b.name for b in medtl.list_backbones() if b.offline_sources]`
        for those that load offline here.
    """
    from medtl.models.backbones import BACKBONES, offline_sources

    return [BackboneInfo(s.name, s.family, s.input_size, s.feature_dim, s.default_weights,
                         tuple(offline_sources(s))) for s in BACKBONES.values()]


def train(data: PathLike | None = None, backbone: str | None = None, strategy: str | None = None, *,
          config: PathLike | RunConfig | None = None, resume: PathLike | None = None, progress: bool = False,
          **settings: Any) -> "Run":
    """Train and evaluate a classifier, writing a run folder.

    Args:
        data: A folder of class folders, a folder of split folders (train/val/test, Training/Testing, ...),
            a .csv/.tsv manifest, or a MedMNIST .npz file.
        backbone: A name from `medtl backbones` (default efficientnet_lite0).
        strategy: auto, scratch, linear, partial or full (default auto: chosen on validation within
            `budget`, default 15m).
        config: A YAML run config (or a `RunConfig`) that the other arguments override.
        resume: A run folder whose killed run to continue from its last finished epoch, with the config it
            was started with (no other argument may be given then).
        progress: Show progress (bars on a terminal, log lines otherwise).
        **settings: Any other setting: a flag name (`epochs=5`), a field found in one section (`batch_size=32`)
            or a dotted key (`**{"train.lr": 0.01}`).

    Returns:
        The finished run.

    Raises:
        MedtlError: A bad setting, data or weights (before anything is written), or a run that cannot go on.
    """
    from medtl.training.run import run as run_training

    if resume is not None:
        given = {k: v for k, v in {"data": data, "backbone": backbone, "strategy": strategy, "config": config,
                                   **settings}.items() if v is not None}
        if given:
            raise MedtlError(f"--resume {resume} continues the run with its own config; drop {', '.join(given)} "
                             "(or start a new run without --resume)")
        folder = RunFolder(resume)
        if not folder.config.is_file():
            raise MedtlError(f"--resume {resume}: no {folder.config.name} there; pass a run folder that "
                             "`medtl train` started")
        cfg = apply_overrides(load_config(folder.config), {"out": str(folder.path.parent), "name": folder.path.name})
    elif data is None and config is None:
        raise MedtlError("missing DATA: pass a data folder, manifest or .npz (or --resume RUN_DIR)")
    else:  # DATA given wins over the config's data.path, which serves when DATA is left out
        base = config if isinstance(config, RunConfig) else load_config(config)
        cfg = apply_overrides(base, overrides_of({"data.path": str(data) if data else None, "backbone": backbone,
                                                  "strategy": strategy, **settings}))
        if not cfg.data.path:
            given = "the RunConfig" if isinstance(config, RunConfig) else f"config file {config}"
            raise MedtlError(f"missing DATA: {given} has no data.path; pass a data folder, manifest or .npz "
                             "as DATA, or set data.path in the config")
    return Run(run_training(cfg, progress=progress, resume=resume is not None))


class Predictions(list):
    """One dict per readable image (path, predicted, prob_<class>...), plus `failed` {path: reason}."""

    def __init__(self, rows: list[dict], failed: dict[str, str], writer) -> None:
        super().__init__(rows)
        self.failed = failed
        self._writer = writer

    def to_csv(self, path: PathLike) -> Path:
        """path, predicted, one probability column per class, threshold, error (unreadable files too)."""
        self._writer(Path(path))
        return Path(path)


@dataclass(frozen=True)
class Run:
    """A run folder written by `medtl train`, and what can be done with the model in it."""

    folder: RunFolder

    def __init__(self, path: PathLike | RunFolder) -> None:
        object.__setattr__(self, "folder", path if isinstance(path, RunFolder) else RunFolder(path))

    @classmethod
    def load(cls, path: PathLike) -> "Run":
        """The run in the folder `path` (written by `medtl train` or `medtl.train`)."""
        folder = RunFolder(path)
        folder.require_checkpoint()  # a killed run: "did not finish", and how to go on with it
        return cls(folder)

    @property
    def path(self) -> Path:
        """The run folder."""
        return self.folder.path

    @property
    def metrics(self) -> dict[str, Any]:
        """metrics.json: per split loss, accuracy, sensitivity, specificity, F1, G-mean, AUC, confusion matrix,
        and the threshold chosen on validation."""
        from medtl.evaluation.records import RunMetrics

        return RunMetrics.of_run(self.folder).to_dict()

    @property
    def config(self) -> RunConfig:
        """The resolved config the run was trained with."""
        return load_config(self.folder.config)

    @functools.cached_property
    def predictor(self):
        """The model with its classes, threshold and preprocessing, loaded once (checked against the digest
        its run recorded)."""
        from medtl.deploy.predictor import Predictor

        return Predictor.from_run(self.path)

    def predictor_on(self, engine: str):
        """`predictor`, its network run by `engine` (auto | torch | openvino | onnxruntime) from the next batch."""
        from medtl.models.engine import ENGINES

        if engine not in ENGINES:
            raise MedtlError(f"engine {engine!r}; valid: {', '.join(ENGINES)}")
        pred = self.predictor
        if pred.engine != engine:
            pred.engine, pred.runner = engine, None
        return pred

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
        from medtl.data.sources import expand_inputs
        from medtl.deploy.predictor import EXTRA, predict_files, write_predictions
        from medtl.evaluation.conformal import check_coverage

        pred = self.predictor_on(engine)
        pred.coverage = check_coverage(coverage)
        found, failed = predict_files(pred, expand_inputs(_as_list(images)), batch_size, progress)
        rows = [{"path": r["path"], "predicted": r["predicted"],
                 **{f"prob_{c}": float(p) for c, p in zip(pred.classes, r["probabilities"])},
                 **{key: r[key] for key in EXTRA if pred.reference is not None}} for r in found]
        return Predictions(rows, failed, lambda path: write_predictions(path, pred, found, failed))

    def explain(self, images: Sequence[PathLike] | PathLike, out: PathLike = "explain",
                method: str = "gradcam") -> tuple[list[Path], dict[str, str]]:
        """Grad-CAM overlay PNGs in `out`; returns (written files, {unreadable path: reason})."""
        from medtl.data.sources import expand_inputs
        from medtl.deploy.explain import explain_files

        return explain_files(self.predictor, expand_inputs(_as_list(images)), Path(out), method)

    def cam_grid(self, method: str = "gradcam") -> Path:
        """cam_grid.png in the run folder: CAM overlays of test true/false positives and false negatives."""
        from medtl.deploy.explain import report_grid

        return report_grid(self.path, method)

    def export(self, format: str = "onnx", output: PathLike | None = None,
               images: Sequence[PathLike] | None = None, tolerance: float = 1e-4) -> tuple[Path, float]:
        """ONNX or TorchScript with the preprocessing in its metadata, kept only when it agrees with PyTorch;
        returns (file, max |difference| of probabilities)."""
        from medtl.data.sources import expand_inputs
        from medtl.deploy.export import export

        files = [str(p) for p in expand_inputs(_as_list(images))] if images else None
        return export(self.path, format, output, files, tolerance)

    def evaluate(self, data: PathLike, split: str = "test", progress: bool = False, *,
                 output_dir: PathLike | None = None, classes: str | dict[str, str] | None = None,
                 threshold: str | None = None, calibrate_fraction: float | None = None, temperature: bool = False,
                 seed: int = 0) -> "Evaluation":
        """Score the run on labelled data from anywhere, as training scored its test split.

        Args:
            data: Data in any layout `train` takes (a plain class-folder tree is scored whole).
            split: The split of `data` to score.
            progress: Show progress.
            output_dir: Write the evaluation folder here (metrics.json, predictions.csv, figures).
            classes: The data's class names mapped onto the run's: "0=NORMAL,1=PNEUMONIA" or a dict.
            threshold: An operating point chosen on the run's validation predictions (youden, f1, a number,
                "sensitivity>=0.95", "specificity>=0.90"); default the run's own threshold.
            calibrate_fraction: Refit the threshold (and with `temperature` a temperature) on this stratified,
                seeded part of the data (patients and copies kept together); the rest is scored before and after.
            temperature: Refit a temperature on the calibration part too.
            seed: Seed of the calibration split.

        Returns:
            An `Evaluation`: `metrics` (with 95 % intervals, calibration, per class), `operating_point`,
            `copies` of the run's training/validation images and `without_copies`, `recalibration`;
            `evaluation["auc"]` reads `metrics`.
        """
        from medtl.deploy.evaluate import evaluate

        return evaluate(self.path, data, split, output_dir, classes, threshold, calibrate_fraction, temperature, seed,
                        progress)

    def calibrate(self, data: PathLike, split: str = "test", *, output_dir: PathLike | None = None,
                  name: str | None = None, classes: str | dict[str, str] | None = None, threshold: str | None = None,
                  temperature: bool = False, progress: bool = False) -> "Run":
        """Refit the threshold (and with `temperature` the temperature) on labelled local images.

        Returns:
            A new run (same weights; new threshold and temperature; `metrics["calibrated_from"]` says from what),
            in `output_dir` (default: beside this one) named `name` (default: `<run>-calibrated`).
        """
        from medtl.deploy.recalibrate import calibrate

        return Run(calibrate(self.path, data, output_dir, name, split, classes, threshold, temperature, progress))

    def card(self, **options: Any) -> dict[str, Path]:
        """model_card.md/.html and the checklists in the run folder; `options` as `medtl.card` takes them."""
        return card(self.path, **options)

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"


def _as_list(items: Sequence[PathLike] | PathLike) -> list[PathLike]:
    return [items] if isinstance(items, (str, Path)) else list(items)






def evaluate(run_dir: PathLike, data: PathLike, split: str = "test", output: PathLike | None = None,
             progress: bool = False, **options: Any) -> "Evaluation":
    """`Run.load(run_dir).evaluate(data, split, **options)`; `output`: also write its metrics JSON there."""
    from medtl.core.io import write_json

    evaluation = Run.load(run_dir).evaluate(data, split, progress, **options)
    if output is not None:
        write_json(output, evaluation.metrics)
    return evaluation




def calibrate(run_dir: PathLike, data: PathLike, **options: Any) -> Run:
    """`Run.load(run_dir).calibrate(data, **options)`: a new run with the threshold refitted on local images."""
    return Run.load(run_dir).calibrate(data, **options)


def load_evaluation(folder: PathLike) -> "Evaluation":
    """The `Evaluation` record `medtl evaluate` wrote into `folder`."""
    from medtl.deploy.evaluation_folder import Evaluation

    return Evaluation.load(folder)


__all__ = ["Predictions", "Run", "audit", "calibrate", "card", "card_template", "evaluate", "load_evaluation",
           "make_config", "report", "study", "train", "tune"]
