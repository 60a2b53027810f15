"""The process's runtime settings for a run: its device, the allocator (tuned, and trimmed between phases), the
number of threads, the seeds and deterministic kernels."""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import random
import sys
import time
from contextlib import contextmanager
from typing import Callable

import numpy as np
import torch

from medtl.core.config import RuntimeConfig
from medtl.core.device import pick_device
from medtl.training import distributed

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc mallopt parameters (malloc.h)


def tune_allocator() -> bool:
    """glibc: serve large tensors from the heap and keep freed memory for reuse (no mmap, no trim).

    By default every large tensor is a fresh mmap that the kernel zero-fills page by page and takes back
    on free; `bench/cpu_settings.py` measured that this doubles Lite0's CPU forward speed on this machine
    (the same as MALLOC_MMAP_MAX_=0 in the environment, or tcmalloc). Returns False where it does not apply.
    """
    libc = _glibc()
    return libc is not None and bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1))


def _glibc():
    """glibc, or None where the C library is another (not Linux, or musl: nothing to tune or trim)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def release_memory() -> bool:
    """Give the heap's free memory back to the system (glibc `malloc_trim`) between phases of a run: the tuned
    allocator keeps it otherwise, and the next phase (another image size, another strategy) would add its peak
    to the last one's. Returns False where it does not apply."""
    gc.collect()
    libc = _glibc()
    return libc is not None and bool(libc.malloc_trim(0))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextmanager
def deterministic(on: bool):
    """`runtime.deterministic`: deterministic kernels only (an error names any op that has none) and no cuDNN
    autotuning, so a GPU run repeats bit for bit; restored afterwards. CPU runs repeat without it."""
    if not on:
        yield
        return
    before = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS's condition for repeatable matmuls
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0])
        torch.backends.cudnn.benchmark = before[1]


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
