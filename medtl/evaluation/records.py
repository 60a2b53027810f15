"""`RunMetrics`: the record of a finished run's `metrics.json`, written by the trainer and read by studies,
tuning, the command line and the Python API, so its keys are spelled in one place.

The file keeps the keys it always had, plus `schema_version`. A file without one (written before it existed)
reads as version 1; a file from a later schema than this medtl knows is refused in one line. Keys this
version does not know travel along unchanged (`extra`), so reading and writing a file keeps them.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medtl.core.errors import MedtlError
from medtl.core.io import write_json

if TYPE_CHECKING:
    from medtl.core.runfolder import RunFolder

SCHEMA_VERSION = 1
# metrics.json's keys in the order they are written; `REQUIRED` must be there, the others are written when set
REQUIRED = ("best_epoch", "epochs_run", "train_seconds", "threshold", "threshold_method", "classes", "image_size",
            "split_sizes", "splits", "temperature")
OPTIONAL = ("uncalibrated", "auto", "tta", "environment", "patients", "patient_level")


@dataclass(frozen=True)
class RunMetrics:
    """A run's scores and what produced them, as `metrics.json` holds them.

    Attributes:
        best_epoch: 1-based epoch whose weights the checkpoint holds.
        epochs_run: Epochs trained.
        train_seconds: Seconds from the start of training to the end of scoring.
        threshold: Decision threshold on the positive class's probability (0.5 for a multiclass task).
        threshold_method: How the threshold was chosen on validation (`eval.threshold`).
        classes: Class names, in label order.
        image_size: Side of the images the model saw, in pixels.
        split_sizes: Images per split.
        splits: Scores by split name (`val`, `test`, `test_deduplicated`...): loss, accuracy, AUC, ...
        temperature: Calibration temperature applied to the probabilities (1.0: none).
        weights_sha256: Digest of the checkpoint's weights (`state_digest`).
        uncalibrated: Calibration of each split before the temperature, when one was fitted.
        auto: Strategy auto's candidates, choice and reason.
        tta: Test-time augmentation applied, and why.
        environment: Package versions and medtl's commit when the run was trained.
        patients: Where the patient keys came from and how many keys each split has ({}: no keys).
        patient_level: Scores per patient key (the aggregation rule and threshold chosen on validation, each
            split's metrics with intervals over keys); {}: no keys.
        extra: Keys this version of medtl does not know, kept as read.
        schema_version: The file's schema version.
    """

    best_epoch: int
    epochs_run: int
    train_seconds: float
    threshold: float
    threshold_method: str
    classes: list[str]
    image_size: int
    split_sizes: dict[str, int]
    splits: dict[str, dict[str, Any]]
    temperature: float
    weights_sha256: str = ""
    uncalibrated: dict[str, Any] = field(default_factory=dict)
    auto: dict[str, Any] = field(default_factory=dict)
    tta: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)  # package versions, medtl's commit
    patients: dict[str, Any] = field(default_factory=dict)  # key source, keys per split
    patient_level: dict[str, Any] = field(default_factory=dict)  # rule, threshold, metrics per split by key
    extra: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        """The JSON object written to `metrics.json` (the keys it always had, in their order)."""
        out: dict[str, Any] = {"schema_version": self.schema_version}
        out.update({k: getattr(self, k) for k in REQUIRED})
        out.update({k: getattr(self, k) for k in OPTIONAL if getattr(self, k)})
        out.update(self.extra)
        out["weights_sha256"] = self.weights_sha256
        return out

    def write(self, path: Path) -> None:
        """Write metrics.json atomically (temp file and rename): a finished run is one whose metrics.json exists.

        Args:
            path: The file.
        """
        write_json(Path(path), self.to_dict())

    @classmethod
    def from_dict(cls, data: Any, path: Path | str = "metrics.json") -> "RunMetrics":
        """The record of a parsed `metrics.json`.

        Args:
            data: The parsed JSON object.
            path: The file it came from, named in errors.

        Returns:
            The record; keys this version does not know are kept in `extra`.

        Raises:
            MedtlError: Not an object, a later schema, or a required key missing.
        """
        if not isinstance(data, dict):
            raise MedtlError(f"metrics file {path} holds {type(data).__name__}, not a JSON object; train the run "
                             "again (its metrics.json is damaged)")
        version = data.get("schema_version", 1)  # written before schema_version existed: version 1
        if not isinstance(version, int) or isinstance(version, bool) or version > SCHEMA_VERSION or version < 1:
            raise MedtlError(f"metrics file {path} has schema_version {version!r}, which this medtl (schema "
                             f"{SCHEMA_VERSION}) cannot read; upgrade medtl (pip install -U medtl) to read it")
        missing = [k for k in REQUIRED if k not in data]
        if missing:
            raise MedtlError(f"metrics file {path} has no {', '.join(missing)}; train the run again (its "
                             "metrics.json is damaged)")
        known = {f.name for f in dataclasses.fields(cls)} - {"extra", "schema_version"}
        kwargs = {k: v for k, v in data.items() if k in known}
        extra = {k: v for k, v in data.items() if k not in known and k != "schema_version"}
        return cls(**kwargs, extra=extra, schema_version=version)

    @classmethod
    def read(cls, path: Path | str) -> "RunMetrics":
        """Read a metrics.json.

        Args:
            path: The file.

        Returns:
            Its record.

        Raises:
            MedtlError: The file is missing, unreadable, damaged or from a later schema (one line each).
        """
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise MedtlError(f"metrics file {path} not found; pass the metrics.json of a finished run") from None
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise MedtlError(f"metrics file {path} is unreadable ({type(exc).__name__}); train the run again (its "
                             "metrics.json is damaged)") from exc
        return cls.from_dict(data, path)

    @classmethod
    def of_run(cls, folder: "RunFolder") -> "RunMetrics":
        """The metrics of a run: the one reader of a run folder's metrics.json.

        Args:
            folder: The run's `RunFolder`.

        Returns:
            Its record.

        Raises:
            MedtlError: The run did not finish (and how to go on with it), or its metrics.json is damaged.
        """
        return cls.read(folder.require_finished())

    def __getitem__(self, key: str) -> Any:
        """`metrics["splits"]["test"]["auc"]`: a key of `metrics.json` (what `to_dict` writes), as the record
        was read before it was one."""
        return self.to_dict()[key]

    def get(self, key: str, default: Any = None) -> Any:
        """A key of `metrics.json`, as a dict's `get`.

        Args:
            key: The JSON key.
            default: What a key the file does not hold gives.

        Returns:
            Its value, or `default`.
        """
        return self.to_dict().get(key, default)
