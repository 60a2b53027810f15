"""The process's runtime settings for a run: its device, the allocator and the number of threads."""

from __future__ import annotations

import logging
import os
import time
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
    """`timed()` (seconds of a training step) with this process's threads; when other processes kept at least
    BUSY cores busy meanwhile (`others_busy`), timed again with half the threads, and those kept when quicker:
    training threads that wait on each other across shared cores can be many times slower than fewer threads.
    Returns (the quicker step's seconds, {"other_cores_busy", "timed": {threads: seconds}, "chosen"})."""
    threads = torch.get_num_threads()
    others = CpuShare()
    seconds = {threads: timed()}
    busy = others.busy()
    if threads > 1 and busy >= BUSY:
        torch.set_num_threads(threads // 2)
        seconds[threads // 2] = timed()
        torch.set_num_threads(min(seconds, key=seconds.__getitem__))
        log.info("the machine is busy (other programs kept %.1f of %d cores busy): a training step takes %s; "
                 "training goes on with %d threads", busy, _cpus(),
                 ", ".join(f"{s:.2f} s on {n} threads" for n, s in seconds.items()), torch.get_num_threads())
    chosen = torch.get_num_threads()
    timings = {str(n): round(s, 3) for n, s in seconds.items()}
    return seconds[chosen], {"other_cores_busy": round(busy, 2), "timed": timings, "chosen": chosen}


BUSY = 0.5  # cores kept busy by other programs from which a machine counts as busy


class CpuShare:
    """How many cores other processes kept busy since this was made: the machine's busy CPU time (Linux
    /proc/stat) less this process's, over the wall time; elsewhere the load average less this process's
    threads (a one-minute average: slower to see a change)."""

    def __init__(self):
        self.wall, self.mine, self.all = time.monotonic(), time.process_time(), _machine_seconds()

    def busy(self) -> float:
        wall = time.monotonic() - self.wall
        now = _machine_seconds()
        if now is None or self.all is None or wall <= 0:
            load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
            return max(load - torch.get_num_threads(), 0.0)
        return max((now - self.all) - (time.process_time() - self.mine), 0.0) / wall


def _machine_seconds() -> float | None:
    """CPU seconds all processes have run (user, nice, system, irq, softirq), from /proc/stat; None without it."""
    try:
        with open("/proc/stat") as fh:
            fields = fh.readline().split()
        user, nice, system, _idle, _iowait, irq, softirq = (int(x) for x in fields[1:8])
        return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, AttributeError):
        return None


def _cpus() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
