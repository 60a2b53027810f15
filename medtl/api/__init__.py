"""medtl from Python: the same operations as the command line, which is a thin layer over this module.

    import medtl
    run = medtl.train("data/chest_xray", strategy="linear", epochs=5, image_size=128)
    run.metrics["splits"]["test"]["auc"]
    rows = run.predict(["new/xray1.png", "new/xray2.dcm"])     # list of dicts; pandas.DataFrame(rows) works
    run.export("onnx")

Settings are keyword arguments: a flag name (`epochs`, `image_size`, `lr`, `seed`, ...), a field name found
in one config section only (`batch_size`, `val_fraction`, ...), or a dotted key (`**{"train.lr": 0.01}`).
Every value is checked when the config is made, before anything is written.

`Run` and `Predictions` live in medtl/api/run.py and medtl/api/model.py, studies, tune, audit and cards in
medtl/api/research.py; all are imported from here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medtl.api.model import Predictions
from medtl.api.run import Run
from medtl.api.research import audit, card, card_template, report, study, tune
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
                         offline_sources=tuple(offline_sources(s))) for s in BACKBONES.values()]


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


def evaluate(run_dir: PathLike, data: PathLike, split: str = "test", output: PathLike | None = None,
             progress: bool = False, **options: Any) -> "Evaluation":
    """Score a trained run on labelled data from anywhere: `Run.load(run_dir).evaluate(data, split, **options)`.

    Args:
        run_dir: A run folder written by `medtl train`.
        data: Labelled data in any layout `train` takes (a plain class-folder tree is scored whole).
        split: The split of `data` to score.
        output: Also write the evaluation's metrics JSON to this file.
        progress: Show progress.
        **options: The fields of `EvaluateOptions`, as `Run.evaluate` takes them.

    Returns:
        The `Evaluation` (metrics with 95 % intervals, operating point, copies of training images).

    Raises:
        MedtlError: A run that did not finish, data that do not match its classes, a bad option.
    """
    from medtl.core.io import write_json

    evaluation = Run.load(run_dir).evaluate(data, split, progress, **options)
    if output is not None:
        write_json(output, evaluation.metrics)
    return evaluation


def calibrate(run_dir: PathLike, data: PathLike, **options: Any) -> Run:
    """Refit a run's threshold (and temperature) on labelled local images: `Run.load(run_dir).calibrate(...)`.

    Args:
        run_dir: A run folder written by `medtl train`.
        data: Labelled local images in any layout `train` takes.
        **options: `split`, `output_dir`, `name`, `classes`, `threshold`, `temperature`, `progress`, as
            `Run.calibrate` takes them.

    Returns:
        The new run (same weights, the refitted threshold and temperature).
    """
    return Run.load(run_dir).calibrate(data, **options)


def load_evaluation(folder: PathLike) -> "Evaluation":
    """Read back an evaluation.

    Args:
        folder: An evaluation folder written by `medtl evaluate` (or `medtl.evaluate` with an output folder).

    Returns:
        Its `Evaluation` record.

    Raises:
        MedtlError: The folder holds no readable evaluation record.
    """
    from medtl.deploy.evaluation_folder import Evaluation

    return Evaluation.load(folder)


__all__ = ["Predictions", "Run", "audit", "calibrate", "card", "card_template", "evaluate", "load_evaluation",
           "make_config", "report", "study", "train", "tune"]
