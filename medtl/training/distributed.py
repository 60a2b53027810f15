"""Data-parallel training under `torchrun` (DDP): NCCL on GPUs, gloo on CPU.

`medtl train` runs unchanged under `torchrun --nproc-per-node N -m medtl train ...`: each process reads
its rank from the environment torchrun sets. One global batch of `train.batch_size` rows is cut into one
slice per process, so N processes take the same optimizer steps as one process with that batch (the
losses are weighted so that DDP's gradient mean is the mean over the global batch). Evaluation is
sharded the same way and every process gathers all predictions, so each computes the same metrics and
takes the same early-stopping decision. Decoded images and feature caches are built by the first process
of each node while the others wait, then read by all; only rank 0 writes the run folder.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from medtl.core.errors import MedtlError

# the first process of a node decodes and caches the data set while the others wait at a barrier:
# on a large set that takes far longer than torch's default 10-30 min collective timeout
TIMEOUT = timedelta(hours=6)


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (rank 0 of 1 without torchrun)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1

    @property
    def active(self) -> bool:
        return self.size > 1 and dist.is_available() and dist.is_initialized()

    @property
    def main(self) -> bool:
        return self.rank == 0


SINGLE = World()


def from_env() -> World:
    """The world torchrun describes in RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE."""
    env = os.environ
    return World(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)),
                 int(env.get("LOCAL_WORLD_SIZE", 1)))


def current() -> World:
    """The world when a process group is running, else one process."""
    return from_env() if dist.is_available() and dist.is_initialized() else SINGLE


@contextmanager
def session(device: torch.device) -> Iterator[torch.device]:
    """Join the process group torchrun set up (when WORLD_SIZE > 1) for the duration; yields this process's
    device (cuda:LOCAL_RANK on GPUs). Leaves a group that the caller started alone."""
    world = from_env()
    if world.size == 1 or dist.is_initialized():
        yield _local_device(device, world)
        return
    if not dist.is_available():
        raise MedtlError(f"WORLD_SIZE={world.size} but this torch build has no torch.distributed; run one process")
    device = _local_device(device, world)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=TIMEOUT, device_id=device if device.type == "cuda" else None)
    try:
        yield device
    finally:
        dist.destroy_process_group()


def _local_device(device: torch.device, world: World) -> torch.device:
    if device.type != "cuda" or world.size == 1:
        return device
    if world.local_rank >= torch.cuda.device_count():
        raise MedtlError(f"LOCAL_RANK={world.local_rank} but this node has {torch.cuda.device_count()} GPUs; "
                         "start at most one process per GPU (torchrun --nproc-per-node)")
    torch.cuda.set_device(world.local_rank)
    return torch.device("cuda", world.local_rank)


def default_threads() -> int:
    """CPU threads per process: the node's cores shared among its processes (oversubscription is ~30x slower)."""
    return max(1, (os.cpu_count() or 1) // from_env().local_size)


@contextmanager
def main_first(world: World | None = None) -> Iterator[None]:
    """The first process of each node runs the block (building caches) before the others (reading them)."""
    world = world or current()
    if world.active and world.local_rank != 0:
        dist.barrier()
    yield
    if world.active and world.local_rank == 0:
        dist.barrier()


def broadcast(value: object, world: World | None = None) -> object:
    """Rank 0's `value` on every process."""
    world = world or current()
    if not world.active:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def collect(value: object, world: World | None = None) -> list:
    """Every process's `value`, in rank order, on every process ([value] for one process)."""
    world = world or current()
    if not world.active:
        return [value]
    box: list = [None] * world.size
    dist.all_gather_object(box, value)
    return box


def all_sum(values: list[float], device: torch.device, world: World | None = None) -> list[float]:
    world = world or current()
    if not world.active:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


class ShardedBatches(Sampler[list[int]]):
    """Batches of `batch_size` rows, shuffled by (seed, epoch); each process yields its contiguous slice of
    every batch. The slices of all processes together are exactly the batches one process would see, and
    the order depends on nothing but the seed and `set_epoch`, so a resumed run sees the same batches."""

    def __init__(self, rows: int, batch_size: int, shuffle: bool, drop_last: bool, seed: int = 0,
                 world: World = SINGLE):
        if batch_size < world.size or rows < world.size:
            raise MedtlError(f"{world.size} processes but a batch of {batch_size} from {rows} rows: each process "
                             "needs at least one row; raise train.batch_size or start fewer processes")
        self.rows, self.batch_size, self.shuffle, self.drop_last = rows, batch_size, shuffle, drop_last
        self.seed, self.world, self.epoch = seed, world, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> Iterator[np.ndarray]:
        if self.shuffle:
            g = torch.Generator().manual_seed(1_000_003 * self.seed + self.epoch)
            order = torch.randperm(self.rows, generator=g).numpy()
        else:
            order = np.arange(self.rows)
        for start in range(0, self.rows, self.batch_size):
            batch = order[start:start + self.batch_size]
            if self.drop_last and len(batch) < self.batch_size:
                return
            yield batch

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self._batches():
            part = np.array_split(batch, self.world.size)[self.world.rank]
            if len(part):
                yield part.tolist()

    def __len__(self) -> int:
        full, rest = divmod(self.rows, self.batch_size)
        return full + (1 if rest and not self.drop_last and rest > self.world.rank else 0)

    def indices(self) -> np.ndarray:
        """This process's rows in the order it yields them."""
        parts = list(self)
        return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)


def loader(dataset: Dataset, batch_size: int, train: bool, seed: int = 0, world: World | None = None,
           **kwargs) -> DataLoader:
    """A DataLoader over this process's share: shuffled, last partial batch dropped, when `train`."""
    world = world or current()
    sampler = ShardedBatches(len(dataset), batch_size, shuffle=train, drop_last=train and len(dataset) > batch_size,
                             seed=seed, world=world)
    return DataLoader(dataset, batch_sampler=sampler, **kwargs)


def set_epoch(batches: object, epoch: int) -> None:
    """Tell a loader's sampler (or a RotatingViews) which epoch starts."""
    target = getattr(batches, "batch_sampler", batches)
    if hasattr(target, "set_epoch"):
        target.set_epoch(epoch)


def gather(batches: object, probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All processes' predictions over a sharded loader, in dataset order, on every process."""
    sampler = getattr(batches, "batch_sampler", None)
    if not isinstance(sampler, ShardedBatches) or not sampler.world.active:
        return probs, labels
    parts = collect((sampler.indices(), probs, labels), sampler.world)
    order = np.argsort(np.concatenate([p[0] for p in parts]), kind="stable")
    return (np.concatenate([p[1] for p in parts])[order], np.concatenate([p[2] for p in parts])[order])


def wrap(model: nn.Module, device: torch.device, world: World | None = None) -> nn.Module:
    """`model` in DistributedDataParallel when several processes train, else itself."""
    world = world or current()
    if not world.active:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def sync_buffers(model: nn.Module, world: World | None = None) -> None:
    """Rank 0's buffers (batch-norm running statistics) on every process. DDP sends them at the start of
    each training forward, so after the last step each process holds its own; evaluation must not."""
    world = world or current()
    if world.active:
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def sync_batch_norm(model: nn.Module, device: torch.device, world: World | None = None) -> nn.Module:
    """Batch norm over the global batch (torch's SyncBatchNorm, GPUs only); without torchrun, `model`."""
    world = world or current()
    if not world.active:
        return model
    if device.type != "cuda":
        raise MedtlError("runtime.sync_bn=true needs GPUs (torch's SyncBatchNorm has no CPU kernel); on CPU each "
                         "process normalizes over its own slice of the batch: --set runtime.sync_bn=false")
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)
