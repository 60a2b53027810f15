"""Typed run configuration: frozen dataclasses, loaded from YAML, overridden from the command line.

The resolved config is written to every run folder and into every checkpoint, so a run can be
reproduced from its folder alone.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

# parse_set, from_dict and to_dict live in config_io/config_values and are imported from here as before
from medtl.core.config_io import parse_set, read_yaml, show  # noqa: F401 (re-exported)
from medtl.core.config_values import THRESHOLD_HELP, from_dict, threshold_spec, to_dict
from medtl.core.errors import MedtlError
from medtl.core.windows import parse_window


Strategy = Literal["auto", "scratch", "linear", "partial", "full"]
STRATEGIES: tuple[str, ...] = typing.get_args(Strategy)


def _at_least(lo: float) -> dict:
    return {"min": lo}


def _between(lo: float, hi: float, open_: bool = True) -> dict:
    return {"gt" if open_ else "min": lo, "lt" if open_ else "max": hi}


class _Checked:
    """Every field checked when the config is made (from YAML, flags or Python): `Literal` choices and the
    ranges in each field's metadata. Nothing downstream checks again."""

    SECTION = ""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            key = f"{self.SECTION}.{f.name}" if self.SECTION else f.name
            _check_choice(hints[f.name], value, key)
            _check_range(f.metadata, value, key)
        self.check()

    def check(self) -> None:
        """Checks across fields, or beyond choices and ranges."""


def _check_choice(hint: Any, value: Any, key: str) -> None:
    choices = _literal(hint)
    if choices and value is not None and value not in choices:
        lower = {str(c).lower(): str(c) for c in choices}
        close = difflib.get_close_matches(str(value).lower(), list(lower), n=1)
        hint_ = f" (did you mean {lower[close[0]]}?)" if close else ""
        raise MedtlError(f"{key}={show(value)} is not a choice{hint_}; valid: {', '.join(map(str, choices))}")


def _literal(hint: Any) -> tuple:
    if typing.get_origin(hint) is Literal:
        return typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return next((typing.get_args(a) for a in typing.get_args(hint) if typing.get_origin(a) is Literal), ())
    return ()


def _check_range(meta: Any, value: Any, key: str) -> None:
    if value is None or not meta:
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise MedtlError(f"{key}={show(value)} must be a finite number")
    bounds = (("min", lambda v, b: v >= b, ">="), ("gt", lambda v, b: v > b, ">"),
              ("max", lambda v, b: v <= b, "<="), ("lt", lambda v, b: v < b, "<"))
    for name, ok, sign in bounds:
        if name in meta and not ok(value, meta[name]):
            raise MedtlError(f"{key}={show(value)} is out of range: it must be {sign} {meta[name]:g}")


@dataclass(frozen=True)
class DataConfig(_Checked):
    SECTION = "data"
    path: str = ""  # a folder of class folders, a folder of split folders, a .csv/.tsv manifest or a .npz
    image_size: int | None = field(default=None, metadata={"min": 16, "max": 4096})  # None: the backbone's native size
    channels: Literal["replicate", "adapt"] = "replicate"  # replicate: gray copied to 3 channels; adapt: 1-channel conv
    val_fraction: float = field(default=0.15, metadata=_between(0, 1))  # carved (stratified, seeded) when no val/
    test_fraction: float = field(default=0.15, metadata=_between(0, 1))  # carved when the data is one tree
    split_seed: int = field(default=0, metadata=_at_least(0))  # fixed across training seeds: same split for all
    subset_per_class: int | None = field(default=None, metadata=_at_least(1))  # fixed stratified subset of train
    augment: bool = True  # random resized crop, flip, small rotation, brightness/contrast jitter
    hflip: bool = True  # horizontal flips in the augmentation (turn off where left and right matter)
    strict: bool = False  # an unreadable image fails the run instead of being skipped and listed
    cache_dir: str | None = None  # None: $MEDTL_CACHE or ~/.cache/medtl
    class_names: tuple[str, ...] = ()  # names for .npz labels 0..K-1
    dicom_window: str = "auto"  # auto | lung | mediastinum | bone | brain | abdomen | C,W | stack:W1,W2,W3
    audit: bool = True  # a brief audit (duplicates across splits, class-correlated properties) before training
    convert_mode: Literal["auto", "L", "RGB"] = "auto"  # every image to one mode first (a mode can't leak)
    max_pixels: int = field(default=89_478_485, metadata=_at_least(1))  # larger images are refused unread (PIL's)
    fast_jpeg: bool = True  # JPEGs >= 4x the size decode at a DCT scale of >= 2x the size (Image.draft)
    # carved splits keep together: copies of one image (content), also near-duplicates (perceptual-hash clusters,
    # a patient proxy when there are no patient IDs), or nothing; manifests with patient IDs group by patient
    group: Literal["content", "near_duplicates", "none"] = "content"
    # manifest columns whose values are subgroups scored apart (sex, site, scanner): None: every extra column with
    # at most 20 values; []: none. A name that is not a column of the manifest is refused when the data are read
    subgroups: tuple[str, ...] | None = None


    def check(self) -> None:
        try:
            parse_window(self.dicom_window)
        except ValueError as exc:
            raise MedtlError(f"data.dicom_window: {exc}") from None


@dataclass(frozen=True)
class ModelConfig(_Checked):
    SECTION = "model"
    backbone: str = "efficientnet_lite0"  # a name from `medtl backbones`
    weights: str = "default"  # default | imagenet | package | none | path to a .pth/.safetensors file
    # auto: chosen on validation within train.budget (linear, then partial / full LP-FT as seed 001's rule of data
    # size and similarity to ImageNet orders them) | scratch | linear (frozen backbone) | partial (top stages) | full
    strategy: Strategy = "auto"
    unfreeze_stages: int = field(default=2, metadata=_at_least(1))  # for partial: how many top stages train
    head: Literal["linear", "mlp"] = "linear"  # the new classifier: one linear layer, or a hidden layer first
    hidden: int = field(default=256, metadata=_at_least(1))  # width of the mlp head
    dropout: float = field(default=0.2, metadata={"min": 0, "lt": 1})  # before the mlp head's last layer


@dataclass(frozen=True)
class TrainConfig(_Checked):
    SECTION = "train"
    epochs: int = field(default=20, metadata=_at_least(1))
    batch_size: int = field(default=64, metadata=_at_least(1))
    optimizer: Literal["adam", "adamw", "sgd", "rmsprop"] = "adamw"
    lr: float = field(default=1e-3, metadata={"gt": 0, "max": 10})
    backbone_lr_scale: float = field(default=1.0, metadata=_at_least(0))  # backbone lr = lr * this (partial/full)
    weight_decay: float = field(default=1e-4, metadata=_at_least(0))
    momentum: float = field(default=0.9, metadata={"min": 0, "lt": 1})  # sgd and rmsprop
    schedule: Literal["cosine", "step", "none"] = "cosine"
    step_size: int = field(default=7, metadata=_at_least(1))
    gamma: float = field(default=0.1, metadata={"gt": 0, "max": 1})
    patience: int = field(default=5, metadata=_at_least(1))  # early stopping: epochs without improvement
    monitor: Literal["auc", "loss"] = "auc"  # on validation
    class_weights: bool = True
    label_smoothing: float = field(default=0.0, metadata={"min": 0, "lt": 0.5})  # training targets only
    # test-time augmentation (val, test, every later prediction): hflip = logits of image and mirror averaged
    # (needs data.hflip); auto = hflip where it helps on validation (training/mirror.py)
    tta: Literal["auto", "none", "hflip"] = "auto"
    threshold: str = "youden"  # youden | f1 | a number such as 0.5 | sensitivity>=0.95 | specificity>=0.90; on validation
    bootstrap: int = field(default=1000, metadata={"min": 0, "max": 100_000})  # resamples for the 95 % intervals
    # temperature: probabilities rescaled by one temperature fitted on validation (ranking, AUC unchanged)
    calibrate: Literal["none", "temperature"] = "none"
    feature_views: int = field(default=2, metadata={"min": 0, "max": 64})  # linear/partial: augmented views cached
    cache_frozen: bool = True  # partial: cache the frozen prefix's activations, train the top on them
    recompute: Literal["auto", "on", "off"] = "off"  # the spec's wide stages in backward (models/memory.py)
    # images per forward/backward pass of training on images, gradients summed for one step over the whole batch
    micro_batch: int | None = field(default=None, metadata=_at_least(1))  # None: on CPUs 16 at 224 px (loop.py)
    # partial/full from pretrained weights: "probe" = LP-FT (Kumar et al., ICLR 2022): the new head is first
    # trained as a linear probe on cached features (probe_epochs at probe_lr), then everything fine-tunes
    # from it; "random" = plain fine-tuning from a random head
    head_init: Literal["random", "probe"] = "random"
    probe_epochs: int = field(default=10, metadata={"min": 1, "max": 1000})
    probe_lr: float = field(default=1e-3, metadata={"gt": 0, "max": 10})
    seed: int = field(default=0, metadata={"min": 0, "max": 2**32 - 1})
    deterministic: bool = False  # deterministic kernels only (GPU runs repeat bit for bit); CPU runs repeat anyway
    threads: int | None = field(default=None, metadata=_at_least(1))  # None: the node's cores / its processes
    device: Literal["auto", "cpu", "cuda"] = "auto"
    tune_malloc: bool = True  # CPU: glibc heap instead of mmap for tensors (2x forward speed, bench/cpu_settings.py)
    workers: int | None = field(default=None, metadata=_at_least(0))  # DataLoader workers; None: 0 on CPU, 8 on CUDA
    sync_bn: bool = False  # torchrun on GPUs: batch-norm statistics over the global batch (SyncBatchNorm)
    # frozen passes (linear features, partial prefix): auto = the fastest measured, checked against torch
    engine: Literal["auto", "torch", "openvino", "onnxruntime"] = "auto"
    # wall clock for the whole run, e.g. 15m, 90s, 1.5h: training stops after the epoch that reaches it, and
    # strategy auto shares it among its candidates; None: 15m for auto, no limit otherwise
    budget: str | None = None

    def check(self) -> None:
        if self.budget is not None:
            budget_seconds(self.budget)
        try:
            threshold_spec(self.threshold)
        except ValueError:
            raise MedtlError(f"train.threshold={self.threshold!r}; valid: {THRESHOLD_HELP}") from None


@dataclass(frozen=True)
class RunConfig(_Checked):
    """Everything a run does, checked when made and saved resolved in its folder and checkpoint: `data`,
    `model` and `train` sections, the parent folder `out` and the run's `name`. Make one with
    `medtl.make_config(data, **settings)` (or read a run's `config.yaml` with `--config`); the keys are in the
    settings reference."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    out: str = "runs"  # the parent folder of run folders (--output-dir)
    name: str | None = None  # the run folder's name; None: backbone-strategy-date-time

    def check(self) -> None:
        if self.train.tta == "hflip" and not self.data.hflip:
            raise MedtlError("train.tta=hflip with data.hflip=false: mirrored images are not valid for this data; "
                             "set train.tta=none, or data.hflip=true where left and right do not matter")
        if not self.out:
            raise MedtlError("out='' : give a parent folder for run folders, e.g. --output-dir runs")
        if self.name is not None and (not self.name or Path(self.name).name != self.name or self.name in (".", "..")):
            raise MedtlError(f"name={self.name!r} must be a plain folder name (no '/' or '..'); "
                             "use --output-dir for the parent folder")


AUTO_BUDGET = "15m"
_UNITS = {"s": 1, "m": 60, "h": 3600}


def budget_seconds(text: str) -> float:
    """'15m' -> 900.0; a number with a unit s, m or h, greater than zero."""
    value = math.nan
    given = text.strip() if isinstance(text, str) else ""
    if given[-1:].lower() in _UNITS:
        try:
            value = float(given[:-1]) * _UNITS[given[-1].lower()]
        except ValueError:
            pass
    if not (math.isfinite(value) and value > 0):
        raise MedtlError(f"train.budget={text!r}: give a time with a unit, e.g. --budget 15m, 90s or 1.5h")
    return value


def run_budget(cfg: "RunConfig") -> float | None:
    """The run's wall-clock budget in seconds: train.budget, else AUTO_BUDGET for strategy auto, else none."""
    budget = cfg.train.budget or (AUTO_BUDGET if cfg.model.strategy == "auto" else None)
    return None if budget is None else budget_seconds(budget)


# command-line flags and Python keyword arguments, one table for train, tune, studies and the API
FLAGS = {"backbone": "model.backbone", "strategy": "model.strategy", "weights": "model.weights",
         "epochs": "train.epochs", "image_size": "data.image_size", "channels": "data.channels",
         "seed": "train.seed", "lr": "train.lr", "out": "out", "name": "name", "strict": "data.strict",
         "budget": "train.budget"}


def dotted_key(name: str) -> str:
    """A flag name (`epochs`), a dotted key (`train.epochs`), or a field name found in one section only
    (`batch_size`) -> the dotted key; raises with the close matches otherwise."""
    if name in FLAGS:
        return FLAGS[name]
    if "." in name or name in ("out", "name"):
        return name
    sections = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}
    owners = [s for s, cls in sections.items() if name in {f.name for f in dataclasses.fields(cls)}]
    if len(owners) == 1:
        return f"{owners[0]}.{name}"
    every = sorted(set(FLAGS) | {f.name for cls in sections.values() for f in dataclasses.fields(cls)})
    close = difflib.get_close_matches(name, every, n=3)
    raise MedtlError(f"unknown setting {name!r}" + (f" (did you mean {', '.join(close)}?)" if close else "")
                     + "; use a flag name such as epochs, or a dotted key such as train.lr")


def overrides_of(values: dict[str, Any]) -> dict[str, Any]:
    """{flag or key: value} -> {dotted key: value}, leaving out values that are None (not given)."""
    return {dotted_key(k): v for k, v in values.items() if v is not None}


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
                raise MedtlError(f"override {dotted!r}: {part!r} is not a section; sections: data, model, train")
            node = node[part]
        node[parts[-1]] = value
    return from_dict(RunConfig, tree)


def load_config(path: str | Path | None) -> RunConfig:
    """Read a YAML config file (any subset of sections); defaults fill the rest. Refuses in one line a folder,
    a file that is not UTF-8 YAML, aliases and tags (config_io.read_yaml), and values of the wrong type."""
    if path is None:
        return RunConfig()
    data = read_yaml(path, "config file", example="config.yaml")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise MedtlError(f"config file {path}: the top level is a {type(data).__name__} ({show(data, 40)}); a run "
                         "config is a mapping of sections data, model, train (e.g. a run folder's config.yaml)")
    return run_config_from(data, str(path))


def run_config_from(data: Any, where: str) -> RunConfig:
    """A RunConfig from a parsed YAML mapping; every error names `where` (the file, or file:section)."""
    try:
        return from_dict(RunConfig, data, where="")  # keys as train.lr, after `where: `
    except MedtlError as exc:
        raise MedtlError(f"{where}: {exc}") from None


def dump_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def make_config(data: str | Path | None = None, *, config: str | Path | None = None, **settings: Any) -> RunConfig:
    """The resolved run config: defaults, then the YAML file `config`, then `data` and `settings`."""
    return apply_overrides(load_config(config), overrides_of({"data.path": str(data) if data else None,
                                                             **settings}))
