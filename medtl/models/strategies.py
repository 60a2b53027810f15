"""The classifier (backbone + new head), with what its transfer strategy trains applied: each strategy's record
and freeze rule are in medtl/core/strategies/ (scratch, linear, partial, full, ...)."""

from __future__ import annotations

import copy

import torch
from torch import nn

from medtl.models.backbones import BackboneSpec, build_backbone, get_spec, resolve_weights
from medtl.core.config import ModelConfig
from medtl.core.errors import MedtlError
from medtl.core.strategies import get_strategy



def make_head(in_dim: int, out_dim: int, kind: str, hidden: int, dropout: float) -> nn.Module:
    if kind == "linear":
        return nn.Linear(in_dim, out_dim)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
                             nn.Linear(hidden, out_dim))
    raise MedtlError(f"unknown head '{kind}'; valid: linear, mlp")


class Classifier(nn.Module):
    """Backbone features followed by the new head. Frozen modules stay in eval mode in train()."""

    def __init__(self, backbone: nn.Module, head: nn.Module, frozen: tuple[str, ...] = ()):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.frozen = frozen  # backbone module names whose BatchNorm statistics must not move

    def forward(self, x):
        return self.head(self.backbone(x))

    def train(self, mode: bool = True):
        super().train(mode)
        for name in self.frozen:
            self.backbone.get_submodule(name).eval()
        return self


class Mirrored(nn.Module):
    """Test-time augmentation: the mean of the logits of each image and of its horizontal mirror."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return (self.net(x) + self.net(torch.flip(x, dims=[3]))) / 2


def for_prediction(model: nn.Module, tta: str) -> nn.Module:
    """What predicts for a run whose resolved eval.tta is `tta`: the model, or its mirrored average."""
    return Mirrored(model) if tta == "hflip" else model


def to_probs(logits: torch.Tensor) -> torch.Tensor:
    logits = logits.float()
    return torch.sigmoid(logits[:, 0]) if logits.shape[1] == 1 else torch.softmax(logits, 1)


def build_classifier(cfg: ModelConfig, num_outputs: int, in_chans: int = 3,
                     weights: str | None = None) -> Classifier:
    """Backbone with `weights`, new head, and the strategy's frozen parts applied. `weights` as resolved
    (a run resolves them once: `Prepared.weights`; "none": random, as for a checkpoint's network before its
    state loads); None: resolved here from `cfg` (`effective_weights`)."""
    spec = get_spec(cfg.backbone)
    weights = effective_weights(cfg) if weights is None else weights
    backbone = build_backbone(spec, weights, in_chans)
    head = make_head(spec.feature_dim, num_outputs, cfg.head, cfg.hidden, cfg.dropout)
    model = Classifier(backbone, head)
    apply_strategy(model, spec, cfg.strategy, cfg.unfreeze_stages)
    return model


def effective_weights(cfg: ModelConfig) -> str:
    """A strategy that starts from random weights (scratch) gets none; the others need pretrained ones."""
    spec = get_spec(cfg.backbone)
    if not cfg.strategy_spec.pretrained:
        if cfg.weights not in ("default", "none"):
            raise MedtlError(f"strategy {cfg.strategy} trains from random weights but --weights {cfg.weights} was "
                             "given; drop --weights or use --strategy full")
        return "none"
    return resolve_weights(spec, cfg.weights)


def apply_strategy(model: Classifier, spec: BackboneSpec, strategy: str, unfreeze_stages: int = 2) -> None:
    """Every parameter trainable, then the strategy's freeze rule (medtl/core/strategies/); the modules it
    freezes stay in eval mode (BatchNorm statistics kept); the head always trains."""
    for p in model.parameters():
        p.requires_grad = True
    model.frozen = get_strategy(strategy).freeze(model, spec, unfreeze_stages)
    for p in model.head.parameters():
        p.requires_grad = True
    model.train(model.training)


def param_groups(model: Classifier, lr: float, backbone_lr_scale: float) -> list[dict]:
    """Optimizer groups: trainable backbone parameters (scaled lr) and the head."""
    backbone = [p for p in model.backbone.parameters() if p.requires_grad]
    groups = [{"params": list(model.head.parameters()), "lr": lr}]
    if backbone:
        groups.append({"params": backbone, "lr": lr * backbone_lr_scale})
    return groups


class _Stop(Exception):
    """Raised by a hook to end a forward pass early, once the wanted activation is in hand."""


class Prefix(nn.Module):
    """Runs a backbone only up to `boundary` and returns that module's output, flattened.

    In eager mode the pass stops at the boundary (an exception from the hook); with `early_exit` off it runs
    on and returns the same tensor, a graph an exporter can trace (the unused rest is pruned from it)."""

    def __init__(self, backbone: nn.Module, boundary: str, early_exit: bool = True):
        super().__init__()
        self.backbone, self.boundary, self.early_exit = backbone, boundary, early_exit

    def forward(self, x):
        out = {}

        def hook(module, inputs, output):
            out["x"] = output
            if self.early_exit:
                raise _Stop

        handle = self.backbone.get_submodule(self.boundary).register_forward_hook(hook)
        try:
            self.backbone(x)
        except _Stop:
            pass
        finally:
            handle.remove()
        self.shape = tuple(out["x"].shape[1:])  # of one activation, for unflattening cached rows
        return out["x"].flatten(1)


def split_frozen_prefix(model: Classifier, example: torch.Tensor) -> tuple[str, nn.Module, tuple[int, ...]]:
    """Split a partially frozen backbone into its frozen prefix and a trainable top.

    Returns (boundary, top, activation shape): `top` is a copy of the backbone in which every module
    that runs before the end of the last frozen stage is an Identity, so top(prefix(x)) == backbone(x).
    Found from the modules' execution order on `example` and then checked numerically; a backbone whose
    forward does more than chain its modules raises ValueError (the caller then trains end to end).
    """
    backbone = model.backbone
    if not model.frozen or model.frozen == ("",):
        raise ValueError("only a partially frozen backbone has a prefix to cache")
    order: list[tuple[str, str]] = []
    handles = []
    for name, module in backbone.named_modules():
        if name:
            handles.append(module.register_forward_pre_hook(lambda m, i, n=name: order.append(("start", n))))
            handles.append(module.register_forward_hook(lambda m, i, o, n=name: order.append(("end", n))))
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            full = backbone(example)
    finally:
        for h in handles:
            h.remove()
    ends = {n: i for i, (event, n) in enumerate(order) if event == "end"}
    boundary = max(model.frozen, key=lambda n: ends[n])
    cut = ends[boundary]
    done = [n for i, (event, n) in enumerate(order) if event == "end" and i <= cut]
    later = {n for i, (event, n) in enumerate(order) if event == "start" and i > cut}
    if set(done) & later:
        raise ValueError(f"modules {sorted(set(done) & later)[:3]} run on both sides of {boundary}")
    top = copy.deepcopy(backbone)
    replaced: list[str] = []
    for name in sorted(set(done), key=lambda n: n.count(".")):
        if not any(name.startswith(r + ".") for r in replaced):
            top.set_submodule(name, nn.Identity())
            replaced.append(name)
    prefix = Prefix(backbone, boundary)
    with torch.no_grad():
        act = prefix(example)
        part = top.eval()(act.view(example.shape[0], *prefix.shape))
    backbone.train(was_training)
    if not torch.allclose(part, full, atol=1e-4, rtol=1e-3):
        raise ValueError(f"the forward of '{type(backbone).__name__}' does more than chain its modules")
    return boundary, top, prefix.shape
