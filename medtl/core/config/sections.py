"""The run configuration's sections: frozen dataclasses, every field checked when the config is made.

`RunConfig` holds `data`, `model`, `train` (optimisation), `eval` (how validation and test are scored),
`runtime` (where and how fast it runs) and `cache` (what is kept between runs). Keys of older configs (every
training, scoring and runtime setting under `train`, and `data.cache_dir`) are renamed on the way in by the
one table in renames.py.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from medtl.core.config.yaml_io import show
from medtl.core.config.renames import upgrade
from medtl.core.config.values import THRESHOLD_HELP, threshold_spec
from medtl.core.errors import MedtlError
from medtl.core.strategies import NAMES as STRATEGY_NAMES
from medtl.core.strategies import StrategySpec, get_strategy
from medtl.core.windows import parse_window

# each choice list once: the Literal a field is typed with, and its values for messages and other layers
Strategy = Literal[STRATEGY_NAMES]  # the registry's (medtl/core/strategies/): one module per strategy
STRATEGIES: tuple[str, ...] = typing.get_args(Strategy)
Engine = Literal["auto", "torch", "openvino", "onnxruntime"]
ENGINES: tuple[str, ...] = typing.get_args(Engine)
Device = Literal["auto", "cpu", "cuda"]
DEVICES: tuple[str, ...] = typing.get_args(Device)
Tta = Literal["auto", "none", "hflip"]
TTA_CHOICES: tuple[str, ...] = typing.get_args(Tta)
TRACKERS = ("mlflow", "tensorboard")  # runtime.track's kinds (medtl/training/tracking/)


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
    class_names: tuple[str, ...] = ()  # names for .npz labels 0..K-1
    dicom_window: str = "auto"  # auto | lung | mediastinum | bone | brain | abdomen | C,W | stack:W1,W2,W3
    audit: bool = True  # a brief audit (duplicates across splits, class-correlated properties) before training
    convert_mode: Literal["auto", "L", "RGB"] = "auto"  # every image to one mode first (a mode can't leak)
    max_pixels: int = field(default=89_478_485, metadata=_at_least(1))  # larger images are refused unread (PIL's)
    fast_jpeg: bool = True  # JPEGs >= 4x the size decode at a DCT scale of >= 2x the size (Image.draft)
    # carved splits keep together: copies of one image (content), also near-duplicates (perceptual-hash clusters,
    # a patient proxy when there are no patient IDs), or nothing; manifests with patient IDs group by patient
    group: Literal["content", "near_duplicates", "none"] = "content"
    # where the patient (or study) key of an image comes from, so that carved splits keep a patient together:
    # auto: a manifest's patient column, else the DICOM headers' PatientID (else StudyInstanceUID), else a key the
    # audit finds in the paths with strong evidence (a numbered
    # file-name prefix like person12_..., IM-0115-..., 00000001_000, or a patient folder); none: no key (images
    # only); or a regular expression searched in the path relative to the data root, its first group the key
    patient_pattern: str = "auto"
    # patient keys appear in every output as pseudonyms (an HMAC with the secret in the medtl cache); true: in clear
    reveal_ids: bool = False
    # manifest columns whose values are subgroups scored apart (sex, site, scanner): None: every extra column with
    # at most 20 values; []: none. A name that is not a column of the manifest is refused when the data are read
    subgroups: tuple[str, ...] | None = None


    def check(self) -> None:
        try:
            parse_window(self.dicom_window)
        except ValueError as exc:
            raise MedtlError(f"data.dicom_window: {exc}") from None
        if self.patient_pattern not in ("auto", "none"):
            try:
                groups = re.compile(self.patient_pattern).groups
            except re.error as exc:
                raise MedtlError(f"data.patient_pattern '{self.patient_pattern}' is not a regular expression "
                                 f"({exc}); pass auto, none or a pattern like '(person\\d+)_'") from None
            if groups < 1:
                raise MedtlError(f"data.patient_pattern '{self.patient_pattern}' has no group; put the patient key "
                                 "in parentheses, e.g. '(person\\d+)_'")


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

    @property
    def strategy_spec(self) -> StrategySpec:
        """The record of `strategy` (medtl/core/strategies/): what trains, what is cached, what it costs."""
        return get_strategy(self.strategy)


@dataclass(frozen=True)
class TrainConfig(_Checked):
    """Optimisation: what training does, epoch by epoch."""

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
    # partial/full from pretrained weights: "probe" = LP-FT (Kumar et al., ICLR 2022): the new head is first
    # trained as a linear probe on cached features (probe_epochs at probe_lr), then everything fine-tunes
    # from it; "random" = plain fine-tuning from a random head
    head_init: Literal["random", "probe"] = "random"
    probe_epochs: int = field(default=10, metadata={"min": 1, "max": 1000})
    probe_lr: float = field(default=1e-3, metadata={"gt": 0, "max": 10})
    seed: int = field(default=0, metadata={"min": 0, "max": 2**32 - 1})
    # wall clock for the whole run, e.g. 15m, 90s, 1.5h: training stops after the epoch that reaches it, and
    # strategy auto shares it among its candidates; None: 15m for auto, no limit otherwise
    budget: str | None = None

    def check(self) -> None:
        if self.budget is not None:
            budget_seconds(self.budget)


@dataclass(frozen=True)
class EvalConfig(_Checked):
    """How validation and test are scored: mirroring, the operating point, intervals, calibration."""

    SECTION = "eval"
    # test-time augmentation (val, test, every later prediction): hflip = logits of image and mirror averaged
    # (needs data.hflip); auto = hflip where it helps on validation (training/mirror.py)
    tta: Tta = "auto"
    # chosen on validation: youden | f1 | a number such as 0.5 | sensitivity>=0.95 | specificity>=0.90
    threshold: str = "youden"
    bootstrap: int = field(default=1000, metadata={"min": 0, "max": 100_000})  # resamples for the 95 % intervals
    # temperature: probabilities rescaled by one temperature fitted on validation (ranking, AUC unchanged)
    calibrate: Literal["none", "temperature"] = "none"

    def check(self) -> None:
        try:
            threshold_spec(self.threshold)
        except ValueError:
            raise MedtlError(f"eval.threshold={self.threshold!r}; valid: {THRESHOLD_HELP}") from None


@dataclass(frozen=True)
class RuntimeConfig(_Checked):
    """Where and how fast the run goes; none of these changes what is learned (on a CPU, bit for bit)."""

    SECTION = "runtime"
    device: Device = "auto"
    threads: int | None = field(default=None, metadata=_at_least(1))  # None: the node's cores / its processes
    workers: int | None = field(default=None, metadata=_at_least(0))  # DataLoader workers; None: 0 on CPU, 8 on CUDA
    deterministic: bool = False  # deterministic kernels only (GPU runs repeat bit for bit); CPU runs repeat anyway
    tune_malloc: bool = True  # CPU: glibc heap instead of mmap for tensors (2x forward speed, bench/cpu_settings.py)
    # images per forward/backward pass of training on images, gradients summed for one step over the whole batch
    micro_batch: int | None = field(default=None, metadata=_at_least(1))  # None: on CPUs 16 at 224 px (loop.py)
    recompute: Literal["auto", "on", "off"] = "off"  # the spec's wide stages in backward (models/memory.py)
    sync_bn: bool = False  # torchrun on GPUs: batch-norm statistics over the global batch (SyncBatchNorm)
    # frozen passes (linear features, partial prefix): auto = the fastest measured, checked against torch
    engine: Engine = "auto"
    # experiment trackers the run also logs to (--track): mlflow[:DIR|URI], tensorboard[:DIR]; without a target
    # a local store beside the run folders (<out>/mlflow, <out>/tensorboard); nothing is sent unless a server
    # URI is named. pip install -e ".[track]"
    track: tuple[str, ...] = ()

    def check(self) -> None:
        kinds = [t.partition(":")[0] for t in self.track]
        for item, kind in zip(self.track, kinds):
            if kind not in TRACKERS:
                raise MedtlError(f"runtime.track={item} is not a tracker; valid: mlflow[:DIR|URI], "
                                 "tensorboard[:DIR]")
            if kind == "tensorboard" and "://" in item:
                raise MedtlError(f"runtime.track={item}: TensorBoard writes event files to a folder; give "
                                 "tensorboard:DIR (or mlflow:URI for a server)")
        if len(set(kinds)) < len(kinds):
            raise MedtlError(f"runtime.track names a tracker twice ({', '.join(self.track)}); give each once")


@dataclass(frozen=True)
class CacheConfig(_Checked):
    """What is kept between runs: decoded images, frozen features and activations."""

    SECTION = "cache"
    dir: str | None = None  # None: $MEDTL_CACHE or ~/.cache/medtl
    feature_views: int = field(default=2, metadata={"min": 0, "max": 64})  # linear/partial: augmented views cached
    cache_frozen: bool = True  # partial: cache the frozen prefix's activations, train the top on them


@dataclass(frozen=True)
class RunConfig(_Checked):
    """Everything a run does, checked when made and saved resolved in its folder and checkpoint: the sections
    `data`, `model`, `train`, `eval`, `runtime` and `cache`, the parent folder `out` and the run's `name`. Make one with
    `medtl.make_config(data, **settings)` (or read a run's `config.yaml` with `--config`); the keys are in the
    settings reference."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    out: str = "runs"  # the parent folder of run folders (--output-dir)
    name: str | None = None  # the run folder's name; None: backbone-strategy-date-time

    @classmethod
    def upgrade(cls, data: Any, where: str) -> Any:
        """`data` (a parsed config mapping) with older keys renamed, each logged once (renames.py)."""
        return upgrade(data, where, section_fields())

    def check(self) -> None:
        if self.eval.tta == "hflip" and not self.data.hflip:
            raise MedtlError("eval.tta=hflip with data.hflip=false: mirrored images are not valid for this data; "
                             "set eval.tta=none, or data.hflip=true where left and right do not matter")
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
    budget = cfg.train.budget or (AUTO_BUDGET if cfg.model.strategy_spec.chooses else None)
    return None if budget is None else budget_seconds(budget)




SECTIONS: dict[str, type] = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig, "eval": EvalConfig,
                             "runtime": RuntimeConfig, "cache": CacheConfig}


def section_fields() -> dict[str, set[str]]:
    """Each section's setting names, e.g. {'eval': {'tta', 'threshold', ...}, ...}."""
    return {s: {f.name for f in dataclasses.fields(cls)} for s, cls in SECTIONS.items()}
