"""Recompute the widest stages in the backward pass instead of keeping their activations.

A CNN's early, high-resolution stages hold much of a training step's saved activations and little of its
compute: EfficientNet-Lite0 at 224 px, batch 32 keeps 2.9 GiB of tensors for the backward pass, 0.9 GiB of
them in `blocks.1` (16 -> 96 channels at 112 x 112). A module named in its spec's `recompute` runs under
`torch.utils.checkpoint` (non-reentrant) while it trains: its forward pass keeps only its input, and backward
runs it again. The recomputation must not move batch-norm running statistics a second time: they are put
back as they were after it. Modules that do not train (partial's frozen stages) are left alone.
"""

from __future__ import annotations

import functools
from contextlib import contextmanager, nullcontext
from typing import Iterable, Iterator

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from medtl.models.backbones import get_spec


def recomputed(backbone: str, setting: str, device: torch.device) -> tuple[str, ...]:
    """The modules to recompute for `runtime.recompute` = setting: the spec's on "on", and on "auto" on a CPU."""
    on = setting == "on" or (setting == "auto" and device.type == "cpu")
    return get_spec(backbone).recompute if on else ()


@contextmanager
def recomputing(model: nn.Module, names: Iterable[str]) -> Iterator[list[str]]:
    """Within the block, the named submodules of `model` that have trainable parameters recompute their
    activations in backward (yields their names). Their forward is restored on exit."""
    patched: list[tuple[nn.Module, object]] = []
    done = []
    try:
        for name in names:
            module = model.get_submodule(name)
            if not any(p.requires_grad for p in module.parameters()):
                continue
            patched.append((module, module.__dict__.get("forward")))
            module.forward = functools.partial(_checkpointed, module, module.forward)
            done.append(name)
        yield done
    finally:
        for module, own in reversed(patched):
            if own is None:
                del module.forward
            else:
                module.forward = own


def _checkpointed(module: nn.Module, forward, *args, **kwargs):
    if not (module.training and torch.is_grad_enabled()):
        return forward(*args, **kwargs)
    return checkpoint(forward, *args, use_reentrant=False,
                      context_fn=lambda: (nullcontext(), _statistics_kept(module)), **kwargs)


@contextmanager
def _statistics_kept(module: nn.Module) -> Iterator[None]:
    """Batch-norm running statistics (and counters) as they were before the block."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    saved = [[b.clone() for b in (m.running_mean, m.running_var, m.num_batches_tracked)] for m in norms]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, (mean, var, count) in zip(norms, saved):
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                m.num_batches_tracked.copy_(count)
