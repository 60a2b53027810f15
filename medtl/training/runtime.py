"""The process's runtime settings for a run: its device, the allocator and the number of threads."""

from __future__ import annotations

import logging

import torch

from medtl.core.config import RuntimeConfig
from medtl.core.device import pick_device
from medtl.training import distributed
from medtl.training.loop import tune_allocator

log = logging.getLogger(__name__)


def set_up(rc: RuntimeConfig, device: torch.device | None = None) -> torch.device:
    """The device (`runtime.device` unless given); on a CPU the tuned allocator (runtime.tune_malloc); the threads
    (runtime.threads, else the default for this process's share of the CPU)."""
    device = device or pick_device(rc.device)
    if device.type == "cpu" and rc.tune_malloc:
        log.info("glibc allocator tuned (no mmap, no trim): %s", tune_allocator())
    torch.set_num_threads(rc.threads or distributed.default_threads())
    return device
