"""The process's runtime settings for a run: its device, the allocator and the number of threads."""

from __future__ import annotations

import logging
import os
from typing import Callable

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


def quicker_threads(timed: Callable[[], float]) -> tuple[float, dict]:
    """`timed()` (seconds of a training step) with this process's threads; when the load average says other
    processes take cores too, timed again with half the threads, and those kept when quicker: training
    threads that wait on each other across shared cores can be many times slower than fewer threads. Returns
    (the quicker step's seconds, {"load_average", "timed": {threads: seconds}, "chosen"})."""
    threads = torch.get_num_threads()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    seconds = {threads: timed()}
    if threads > 1 and load > _cpus():
        torch.set_num_threads(threads // 2)
        seconds[threads // 2] = timed()
        torch.set_num_threads(min(seconds, key=seconds.__getitem__))
        log.info("the machine is busy (load average %.1f on %d cores): a training step takes %s; training "
                 "goes on with %d threads", load, _cpus(), ", ".join(f"{s:.2f} s on {n} threads"
                                                                     for n, s in seconds.items()),
                 torch.get_num_threads())
    chosen = torch.get_num_threads()
    timings = {str(n): round(s, 3) for n, s in seconds.items()}
    return seconds[chosen], {"load_average": round(load, 2), "timed": timings, "chosen": chosen}


def _cpus() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
