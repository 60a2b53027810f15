"""Reading torch files that may come from anyone: PyTorch's weights-only unpickler (tensors and plain values), so
a file that would run code when unpickled is refused in one line and never run, and a damaged one is named with
its reason by the caller; `kind` says in a few words what a loaded object is when it is not what was expected."""

from __future__ import annotations

import io
import pickle
import pickletools
import re
import struct
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from medtl.core.errors import MedtlError

# what torch.load raises for a file that is not a torch file or is cut short (text gives KeyError, a cut zip
# RuntimeError, an empty file EOFError); re-raised as one line with the path
READ_ERRORS = (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, TypeError,
               AttributeError, zipfile.BadZipFile)
_REFUSED = "Weights only load failed"  # torch's weights-only unpickler met something outside tensors/plain values


def load_plain(path: Path, what: str, fix: str) -> Any:
    """torch.load(path) restricted to tensors and plain values. A file that asks for more (a pickled class or
    function) is refused without running anything: '<what> <path> ... will not be unpickled ...: <fix>'. Any other
    failure raises one of READ_ERRORS, for the caller to name in its own words (with `reason`)."""
    try:
        with warnings.catch_warnings():  # torch's note on a pickle protocol it did not write; the file is refused
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if _REFUSED not in str(exc):
            raise
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        asked = found.group(1) if found else _pickled_callable(path)
        if asked is None:  # not a pickle at all (torch's unpickler stopped at a byte that is no operation it allows)
            operand = re.search(r"Unsupported operand (\d+)", str(exc))
            raise pickle.UnpicklingError(f"not a torch file of tensors (byte {operand.group(1) if operand else '?'} "
                                         "is no pickle operation allowed there)") from exc
        raise MedtlError(f"{what} {path} holds more than tensors and plain values (it asks for {asked}); it will not "
                         f"be unpickled, since that could run code: {fix}") from exc


def _pickled_callable(path: Path) -> str | None:
    """The first class or function a plain pickle file names, read with pickletools (which runs nothing); None
    when the file is no complete pickle or names none."""
    strings: list[str] = []
    try:
        with open(path, "rb") as fh:  # in memory: a length field claiming 2**63 bytes reads what there is
            head = io.BytesIO(fh.read(16 * 2**20))  # (what a pickle asks for comes first)
        for op, arg, _ in pickletools.genops(head):
            if op.name in ("GLOBAL", "INST"):
                return str(arg).replace(" ", ".")
            if op.name == "STACK_GLOBAL" and len(strings) >= 2:
                return ".".join(strings[-2:])
            if isinstance(arg, str):
                strings.append(arg)
    except (ValueError, EOFError, OSError, struct.error):
        return None
    return None


def reason(exc: BaseException) -> str:
    """'<Class>: <first line of the message>' (at most 120 characters), or the class alone."""
    text = str(exc).strip().splitlines()
    return f"{exc.__class__.__name__}: {text[0][:120]}" if text else exc.__class__.__name__


def kind(obj: Any) -> str:
    """A few words for what `obj` is: 'a list', 'a state dict of 3 tensors', 'a mapping with keys a, b'."""
    if isinstance(obj, dict):
        tensors = [v for v in obj.values() if isinstance(v, torch.Tensor)]
        if obj and len(tensors) == len(obj):
            return f"a state dict of {len(obj)} tensor{'s' if len(obj) != 1 else ''}"
        keys = ", ".join(str(k)[:20] for k in list(obj)[:5]) + (", ..." if len(obj) > 5 else "")
        return f"a mapping with keys {keys}" if obj else "an empty mapping"
    if isinstance(obj, (list, tuple)):
        return f"a {type(obj).__name__} of {len(obj)} item{'s' if len(obj) != 1 else ''}"
    name = "tensor" if isinstance(obj, torch.Tensor) else type(obj).__name__.replace("NoneType", "null")
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"
