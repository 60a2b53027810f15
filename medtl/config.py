"""Typed run configuration: frozen dataclasses, loaded from YAML, overridden from the command line.

The resolved config is written to every run folder and into every checkpoint, so a run can be
reproduced from its folder alone.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from medtl.errors import MedtlError


@dataclass(frozen=True)
class DataConfig:
    path: str = ""
    image_size: int | None = None  # None: the backbone's native input size
    channels: str = "replicate"  # replicate: gray copied to 3 channels; adapt: first conv summed to 1 channel
    val_fraction: float = 0.15  # carved (stratified, seeded) from train when there is no val/
    test_fraction: float = 0.15  # carved only when the data is one tree with no train/ test/
    split_seed: int = 0  # fixed across training seeds, so seeds are compared on the same split
    subset_per_class: int | None = None  # fixed stratified subset of train, e.g. for scratch runs
    augment: bool = True  # random resized crop, flip, small rotation, brightness/contrast jitter
    hflip: bool = True
    strict: bool = False  # an unreadable image fails the run instead of being skipped and listed
    cache_dir: str | None = None  # None: $MEDTL_CACHE or ~/.cache/medtl
    class_names: tuple[str, ...] = ()  # names for .npz labels 0..K-1
    dicom_window: str = "auto"  # auto | lung | mediastinum | bone | brain | abdomen | C,W | stack:W1,W2,W3
    audit: bool = True  # a brief audit (duplicates across splits, class-correlated properties) before training
    convert_mode: str = "auto"  # auto | L | RGB: every image to one mode first (a class-correlated mode can't leak)


@dataclass(frozen=True)
class ModelConfig:
    backbone: str = "efficientnet_lite0"
    weights: str = "default"  # default | imagenet | package | none | path to a .pth/.safetensors file
    strategy: str = "linear"  # scratch | linear | partial | full
    unfreeze_stages: int = 2  # for partial: how many top stages train
    head: str = "linear"  # linear | mlp
    hidden: int = 256  # width of the mlp head
    dropout: float = 0.2  # dropout before the mlp head's last layer


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 20
    batch_size: int = 64
    optimizer: str = "adamw"  # adam | adamw | sgd | rmsprop
    lr: float = 1e-3
    backbone_lr_scale: float = 1.0  # backbone lr = lr * this (partial/full)
    weight_decay: float = 1e-4
    momentum: float = 0.9  # sgd and rmsprop
    schedule: str = "cosine"  # cosine | step | none
    step_size: int = 7
    gamma: float = 0.1
    patience: int = 5  # early stopping: epochs without improvement of `monitor`
    monitor: str = "auc"  # auc | loss  (on validation)
    class_weights: bool = True
    threshold: str = "youden"  # youden | f1 | a number such as 0.5; chosen on validation, never test
    feature_views: int = 2  # linear/partial: augmented views per train image cached (0: clean view only)
    cache_frozen: bool = True  # partial: cache the frozen prefix's activations, train the top on them
    seed: int = 0
    deterministic: bool = False  # deterministic kernels only (GPU runs repeat bit for bit); CPU runs repeat anyway
    threads: int | None = None  # torch intra-op threads; None: the node's cores / its processes (torchrun)
    device: str = "auto"  # auto | cpu | cuda
    tune_malloc: bool = True  # CPU: glibc heap instead of mmap for tensors (2x forward speed, bench/cpu_settings.py)
    workers: int | None = None  # DataLoader worker processes; None: 0 on CPU (measured faster on 2 cores), 8 on CUDA
    sync_bn: bool = False  # torchrun on GPUs: batch-norm statistics over the global batch (SyncBatchNorm)


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    out: str = "runs"
    name: str | None = None


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain dict (tuples as lists) for YAML and checkpoints."""
    out = dataclasses.asdict(cfg)
    return _lists(out)


def _lists(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _lists(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_lists(v) for v in value]
    return value


def from_dict(cls: type, data: dict[str, Any], where: str = "config") -> Any:
    """Build dataclass `cls` from a dict, coercing scalars and naming unknown keys."""
    if not isinstance(data, dict):
        raise MedtlError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            close = difflib.get_close_matches(key, names, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise MedtlError(f"{where}: unknown key '{key}'{hint}; valid keys: {', '.join(names)}")
        kwargs[key] = _coerce(hints[key], value, f"{where}.{key}")
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, where: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value or {}, where)
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, where)
    if typing.get_origin(hint) is tuple:
        items = value.split(",") if isinstance(value, str) else list(value)
        return tuple(str(v).strip() for v in items if str(v).strip())
    try:
        if hint is bool:
            return _to_bool(value)
        return hint(value)
    except (TypeError, ValueError) as exc:
        raise MedtlError(f"{where}: cannot read {value!r} as {hint.__name__}") from exc


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(value)


def apply_overrides(cfg: RunConfig, overrides: dict[str, Any]) -> RunConfig:
    """Apply dotted overrides such as {'train.lr': '0.01', 'model.backbone': 'resnet18'}."""
    tree = to_dict(cfg)
    for dotted, value in overrides.items():
        if value is None:
            continue
        node = tree
        parts = dotted.split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                raise MedtlError(f"override '{dotted}': '{part}' is not a section; sections: data, model, train")
            node = node[part]
        node[parts[-1]] = value
    return from_dict(RunConfig, tree)


def parse_set(items: list[str]) -> dict[str, str]:
    """Parse repeated `--set section.key=value` options."""
    out = {}
    for item in items:
        if "=" not in item:
            raise MedtlError(f"--set {item!r}: expected section.key=value, e.g. --set train.lr=0.001")
        key, value = item.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def load_config(path: str | Path | None) -> RunConfig:
    """Read a YAML config file (any subset of sections); defaults fill the rest."""
    if path is None:
        return RunConfig()
    path = Path(path)
    if not path.is_file():
        raise MedtlError(f"config file {path} not found; pass an existing YAML file or leave --config out")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise MedtlError(f"config file {path} is not valid YAML: {exc}") from exc
    return from_dict(RunConfig, data, where=str(path))


def dump_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
