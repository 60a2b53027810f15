"""Per-epoch training state for `medtl train --resume`: weights, optimizer, scheduler, early-stopping
bookkeeping and every RNG, written atomically (temp file + rename) so a crash never leaves a half-written
state behind, and loaded with `weights_only=True` (plain tensors and numbers only)."""

from __future__ import annotations

import io
import pickle
import random
from pathlib import Path

import numpy as np
import torch

from medtl.core.errors import MedtlError
from medtl.core.faults import out_of_memory
from medtl.core.io import atomic_write, sealed, unseal


def rng_state() -> dict:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {"torch": torch.get_rng_state(), "numpy": torch.from_numpy(keys.astype(np.int64)),
             "numpy_pos": int(pos), "numpy_has_gauss": int(has_gauss), "numpy_gauss": float(gauss),
             "python": torch.tensor(internal, dtype=torch.int64), "python_version": int(version),
             "python_gauss": gauss_next}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"],
                         state["numpy_has_gauss"], state["numpy_gauss"]))
    random.setstate((state["python_version"], tuple(int(v) for v in state["python"].tolist()),
                     state["python_gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_state(path: Path, state: dict) -> None:
    """Written atomically and sealed with a checksum (a bit flipped on disk is refused, never trained on)."""
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write(path, sealed(buf.getvalue()), fsync=True)


def load_state(path: Path) -> dict:
    try:
        payload = unseal(path.read_bytes(), path)
        return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as exc:
        if out_of_memory(exc):  # the state is fine; memory ran out reading it
            raise
        reason = str(exc) if isinstance(exc, ValueError) else exc.__class__.__name__
        raise MedtlError(f"training state {path} is unreadable ({reason}); delete it to restart the run from "
                         "epoch 1") from exc
