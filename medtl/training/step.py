"""One optimizer step on one batch of images: micro-batching's accumulation and the DDP share of the loss.

A batch larger than `plan.micro` runs forward and backward in the fewest equal chunks of at most `micro` rows,
gradients summed (each chunk's mean loss weighted by its share of the batch), then one optimizer step: the
memory of a chunk, the update of the batch. Under torchrun each process's loss is scaled by its share of the
global batch (DDP averages gradients over processes), and only the last chunk all-reduces.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Callable

import torch
from torch import nn

import medtl.training.distributed as distributed
from medtl.training.fitstate import FitPlan

Prepare = Callable[[torch.Tensor], torch.Tensor]


def autocast(device: torch.device):
    """bf16 autocast on CUDA only: on CPUs measured here (AVX2; AVX-512 with bf16) it is no faster than fp32."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast(
        "cpu", enabled=False)


def chunk_count(rows: int, micro: int | None) -> int:
    """The fewest equal chunks of at most `micro` rows (32 rows at micro 31: 2 of 16, not 31 + 1)."""
    return -(-rows // micro) if micro else 1


def train_step(model: nn.Module, x: torch.Tensor, y, prepare: Prepare, opt: torch.optim.Optimizer,
               plan: FitPlan) -> tuple[float, int]:
    """Forward, backward and one optimizer step on the batch `(x, y)`; returns the sum of the rows' losses and
    the rows (this process's)."""
    y = torch.as_tensor(y).to(plan.device, non_blocking=True)
    share = loss_share(len(y), plan.device, distributed.current())
    parts = chunk_count(len(y), plan.micro)
    chunks = list(zip(x.tensor_split(parts), y.tensor_split(parts)))
    opt.zero_grad(set_to_none=True)
    total = 0.0
    for i, (xc, yc) in enumerate(chunks):
        last = i == len(chunks) - 1
        with nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync():  # DDP: one all-reduce
            with autocast(plan.device):
                logits = model(prepare(xc))
            loss = plan.loss_fn(logits, yc)
            (loss * (share * len(yc) / len(y))).backward()
        total += loss.detach().item() * len(yc)
    opt.step()
    return total, len(y)


def loss_share(rows: int, device: torch.device, world: distributed.World) -> float:
    """The factor that turns this process's mean loss into its part of the global batch's mean loss, times
    the number of processes (DDP averages gradients over processes): 1 for a single process."""
    if not world.active:
        return 1.0
    total = distributed.all_sum([float(rows)], device, world)[0]
    return rows * world.size / total
