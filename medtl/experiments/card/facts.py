"""What a model card says, gathered from a run folder's records (and, optionally, the data read again).

Every reader of a record is here, one function each, so a record that changes shape (metrics.json becoming a
`RunMetrics` record) changes one line."""

from __future__ import annotations

import csv
import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from medtl.core.environment import environment
from medtl.core.config import RunConfig, load_config
from medtl.core.errors import MedtlError
from medtl.core.runfolder import RunFolder
from medtl.evaluation.records import RunMetrics
from medtl.training.auto.record import AutoRecord

log = logging.getLogger(__name__)
@dataclass
class RunFacts:
    """One run's records, read once. `data` is None when the data were not read again."""

    folder: RunFolder
    cfg: RunConfig
    metrics: RunMetrics
    auto: AutoRecord | None
    audit_lines: list[str]
    skipped: int
    preprocess: dict
    pretrained: dict
    environment: dict
    data: dict | None = None
    data_note: str = ""
    evaluations: list[tuple[Path, dict]] = field(default_factory=list)


def run_facts(run_dir: str | Path, evaluations: list[str | Path] = (), rescan: bool = True) -> RunFacts:
    """Everything the card says about the run in `run_dir`; refused in one line when it is no finished run."""
    folder = RunFolder(run_dir)
    if not folder.config.is_file():
        raise MedtlError(f"{folder.path} has no {folder.config.name}; pass a run folder written by `medtl train` "
                         "(or a study folder written by `medtl study`)")
    metrics = RunMetrics.of_run(folder)
    cfg = load_config(folder.config)
    facts = RunFacts(folder, cfg, metrics, AutoRecord.read(folder.auto), _audit_lines(folder), skipped=_skipped(folder),
                     preprocess=_preprocess(folder, cfg), pretrained=pretrained(cfg),
                     environment=metrics.environment or environment("when the card was written"))
    facts.evaluations = [(Path(d), evaluation_metrics(d)) for d in [*evaluations, *recorded_evaluations(folder)]]
    if rescan:
        facts.data, facts.data_note = data_facts(cfg, metrics)
    else:
        facts.data_note = "the data were not read again (--no-data): counts come from the run's records"
    return facts


def _audit_lines(folder: RunFolder) -> list[str]:
    if not folder.audit.is_file():
        return []
    lines = folder.audit.read_text(encoding="utf-8").splitlines()
    return [line.removeprefix("warning: ") for line in lines if line.strip()]


def _skipped(folder: RunFolder) -> int:
    if not folder.skipped.is_file():
        return 0
    with open(folder.skipped, newline="", encoding="utf-8") as fh:
        return max(0, sum(1 for _ in csv.reader(fh)) - 1)


def _preprocess(folder: RunFolder, cfg: RunConfig) -> dict:
    """The preprocessing that travels with the weights (read from the checkpoint, checked against its digest)."""
    from medtl.models.checkpoint import Checkpoint

    ckpt = Checkpoint.load(folder.require_checkpoint())
    return {**ckpt.preprocess.to_dict(), "backbone": ckpt.backbone, "threshold": ckpt.threshold,
            "temperature": ckpt.temperature}


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def pretrained(cfg: RunConfig) -> dict:
    """Where the starting weights came from, and the SHA-256 of their file when it is on this machine."""
    from medtl.models.backbones import get_spec, package_weights_path

    spec = get_spec(cfg.model.backbone)
    weights = spec.default_weights if cfg.model.weights == "default" else cfg.model.weights
    if not cfg.model.strategy_spec.pretrained or weights == "none":
        return {"source": "none: random initialization (trained from scratch)", "path": None, "sha256": None}
    if weights == "package":
        path = package_weights_path(spec)
        source = f"ImageNet weights shipped in the Python package {spec.package.split(':')[0]}"
    elif weights == "imagenet":
        path, source = None, f"ImageNet weights of {spec.hub} (torch hub cache)"
    else:
        path, source = Path(weights), "a weights file given with --weights"
    found = path is not None and path.is_file()
    return {"source": source, "path": str(path) if path else None, "sha256": sha256_file(path) if found else None}



def recorded_evaluations(folder: RunFolder) -> list[Path]:
    """Evaluation folders recorded inside the run folder (`evaluations/*/metrics.json`)."""
    root = folder.path / "evaluations"
    return sorted(p.parent for p in root.glob("*/metrics.json")) if root.is_dir() else []


def evaluation_metrics(path: str | Path) -> dict:
    """The metrics.json of an evaluation folder (`medtl evaluate`), or of a metrics file given directly."""
    path = Path(path)
    file = path / "metrics.json" if path.is_dir() else path
    if not file.is_file():
        raise MedtlError(f"--evaluation {path}: no metrics.json there; pass a folder written by `medtl evaluate` "
                         "(or its metrics.json)")
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MedtlError(f"--evaluation {file} is not valid JSON ({exc}); write it again with `medtl evaluate`") from exc


def data_facts(cfg: RunConfig, metrics: RunMetrics) -> tuple[dict | None, str]:
    """The data read again with the run's split settings: counts per class and split, patients or groups,
    copies and near copies (the full audit). (None, why) when the data are not there."""
    from medtl.data.audit import audit
    from medtl.data.sources import discover

    if not cfg.data.path or not Path(cfg.data.path).exists():
        return None, f"the data at {cfg.data.path} are not on this machine: counts come from the run's records"
    splits = discover(cfg.data, cfg.data.split_seed)
    report = audit(splits, perceptual=True)
    recorded = metrics.split_sizes or {}
    now = {s: len(r) for s, r in splits.refs.items()}
    changed = {s for s in now if s in recorded and recorded[s] != now[s] - sum(r in report.unreadable
                                                                                 for r in splits.refs[s])}
    note = (f"the data at {cfg.data.path} were read again; split sizes differ from the run's ({sorted(changed)}): "
            "the data changed since training" if changed else f"the data at {cfg.data.path} were read again")
    patients = splits.keys_per_split() if splits.groups else {}
    return {"audit": report, "patients": patients, "carved": dict(splits.carved),
            "distinct": len(set(splits.content.values())) if splits.content else None,
            "images": len(splits.all_refs()), "notes": list(splits.notes)}, note
