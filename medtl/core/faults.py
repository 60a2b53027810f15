"""Faults from outside the input, told as one line: memory exhausted (a `MemoryError`, an allocator's
`RuntimeError`, a shared library that cannot be mapped or a thread that cannot start under `ulimit -v`).

A C++ `std::bad_alloc` that a library does not turn into an exception aborts the process (exit 134) and
cannot be caught; what it leaves is what SIGKILL leaves: a sealed `state.pt` (or none) and no checkpoint,
which `medtl train` and the commands that read a run folder report as a run that did not finish.
"""

from __future__ import annotations

import errno
import resource

from medtl.core.errors import MedtlError

# an allocation failed, whatever else is going on
ALLOCATION_FAILED = ("can't allocate memory", "cannot allocate memory", "failed to map segment", "out of memory",
                     "std::bad_alloc")
# an allocation failed, or something else did: counted as memory only under an address-space limit
UNDER_A_LIMIT = ("could not create a primitive", "can't start new thread")


def address_limit() -> int | None:
    """The process's address-space limit in bytes (`ulimit -v`), or None when there is none."""
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    return None if soft == resource.RLIM_INFINITY else soft


def out_of_memory(exc: BaseException | None) -> bool:
    """`exc`, or an exception it was raised from or while handling, is memory exhausted."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, MemoryError) or (isinstance(exc, OSError) and exc.errno == errno.ENOMEM):
            return True
        if isinstance(exc, (RuntimeError, ImportError, OSError)):
            text = str(exc).lower()
            if any(s in text for s in ALLOCATION_FAILED) or (
                    address_limit() is not None and any(s in text for s in UNDER_A_LIMIT)):
                return True
        exc = exc.__cause__ or exc.__context__
    return False


def memory_advice() -> str:
    """What to change after memory ran out, naming the address-space limit when one is set."""
    limit = address_limit()
    cap = f" or raise this process's limit of {limit / 2**30:.1f} GiB (ulimit -v)" if limit is not None else ""
    return (f"lower the batch size (train.batch_size, e.g. --set train.batch_size=16; predict: --batch-size) or "
            f"the image size (--image-size), free memory{cap}")


def as_error(exc: BaseException) -> MedtlError:
    """A MedtlError as it is; memory exhausted as one line; anything else raised again, as it was."""
    if isinstance(exc, MedtlError):
        return exc
    if out_of_memory(exc):
        return MedtlError(f"out of memory ({type(exc).__name__}); {memory_advice()}")
    raise exc
