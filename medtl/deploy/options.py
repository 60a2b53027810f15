"""What `medtl evaluate` and `medtl calibrate` are asked to do, as records: the command line, `medtl.Run` and
the library (deploy/evaluate.py, deploy/calibrated_run.py) pass these rather than a long list of parameters.
Which data and which of its splits are scored stay apart: they say what is scored, these say how."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class EvaluateOptions:
    """How a saved run is scored on labelled data (`medtl evaluate`).

    Attributes:
        output_dir: Write the evaluation folder here (None: nothing written).
        classes: The data's class names mapped onto the run's: "0=NORMAL,1=PNEUMONIA" or a dict.
        threshold: An operating-point spec chosen on the run's validation predictions (default: the run's own).
        calibrate_fraction: Refit on this stratified, seeded part of the data; score the rest before and after.
        temperature: Refit a temperature on the calibration part too.
        seed: Seed of the calibration split.
        coverage: Referral: the conformal prediction sets' coverage, calibrated on the run's validation images.
        reveal_ids: Patient keys in clear in every file (True), as pseudonyms (False), or as the run did (None).
    """

    output_dir: str | Path | None = None
    classes: str | dict[str, str] | None = None
    threshold: str | None = None
    calibrate_fraction: float | None = None
    temperature: bool = False
    seed: int = 0
    coverage: float = 0.9  # evaluation/conformal.py's DEFAULT_COVERAGE
    reveal_ids: bool | None = None  # patient keys in clear in the folder (None: as the run was trained)


@dataclass(frozen=True)
class CalibrateOptions:
    """How a run is recalibrated on labelled local images into a new run folder (`medtl calibrate`).

    Attributes:
        output_dir: Parent folder of the new run (default: the source run's).
        name: The new run's folder name (default: `<run>-calibrated`).
        classes: The data's class names mapped onto the run's.
        threshold: The operating-point spec the threshold is refitted by (default: the run's).
        temperature: Refit the temperature too.
    """

    output_dir: str | Path | None = None
    name: str | None = None
    classes: str | dict[str, str] | None = None
    threshold: str | None = None
    temperature: bool = False
