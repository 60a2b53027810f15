"""Config values from YAML, flags and Python, read as the type of their setting: a dataclass from a dict, and back.

Each value is checked for its type before it is converted: a list or a mapping where text is expected is
refused with its key, never turned into the text "['a', 'b']".
"""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import os
import types
import typing
from typing import Any, Literal

from medtl.core.config.yaml_io import parse_flow_list, show
from medtl.core.errors import MedtlError

MAX_INT = 2**63  # no count, size or seed is larger; a larger one is a typo or a hostile file


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain dict (tuples as lists) for YAML and checkpoints."""
    out = dataclasses.asdict(cfg)
    return _lists(out)


def dotted_value(tree: dict, dotted: str) -> Any:
    """The value at a dotted key ('train.lr') of a config as a dict (a run's config.yaml, or `to_dict`)."""
    for part in dotted.split("."):
        tree = tree[part]
    return tree


def _lists(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _lists(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_lists(v) for v in value]
    return value


def from_dict(cls: type, data: dict[str, Any], where: str = "config") -> Any:
    """Build dataclass `cls` from a dict, coercing scalars and naming unknown keys; messages start with
    `where.key` (`key` alone when `where` is empty)."""
    if not isinstance(data, dict):
        raise MedtlError(f"{where or 'config'}: expected a mapping, got {type(data).__name__}")
    upgrade = getattr(cls, "upgrade", None)  # RunConfig: older keys renamed (renames.py)
    if upgrade is not None:
        data = upgrade(data, where)
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise MedtlError(f"{where + ': ' if where else ''}unknown key {show(key)}{hint}; valid keys: "
                             f"{', '.join(names)}")
        kwargs[key] = _coerce(hints[key], value, f"{where}.{key}" if where else key)
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, where: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value or {}, where)
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, where)
    if typing.get_origin(hint) is Literal:
        if isinstance(value, bool) and {"on", "off"} <= set(args):
            return "on" if value else "off"  # YAML 1.1 reads a bare on/off as true/false
        return _text(value, where)  # the choice itself is checked when the config is made
    if typing.get_origin(hint) is tuple:
        return _names(value, where)
    if hint is str:
        return _text(value, where)
    try:
        if hint is bool:
            return _to_bool(value)
        if hint is int:
            return _to_int(value)
        if hint is float and isinstance(value, bool):
            raise ValueError(value)
        return hint(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise MedtlError(f"{where}: cannot read {show(value)} as {hint.__name__}") from exc


def _text(value: Any, where: str) -> str:
    """A text setting: text, a path, or a number or date written without quotes; nothing else is stringified."""
    if isinstance(value, str):
        return value
    if isinstance(value, os.PathLike) and isinstance(os.fspath(value), str):  # a Path from the Python API
        return os.fspath(value)
    if isinstance(value, (int, float, datetime.date)) and not isinstance(value, bool) and abs_ok(value):
        return str(value)
    kind = (f"{type(value).__name__.replace('dict', 'mapping')} {show(value)}" if value is not None
            else "null (an empty value)")
    raise MedtlError(f"{where}: expected text, got a {kind}; give one value, quoted if YAML would read it "
                     "otherwise, e.g. 'yes'")


def abs_ok(value: Any) -> bool:
    """False for an integer too large to be any setting (and to print)."""
    return not isinstance(value, int) or abs(value) < MAX_INT


def _names(value: Any, where: str) -> tuple[str, ...]:
    """A list setting: a list, `a,b` or `[a, b]` (a YAML flow sequence); each item a name or a whole number."""
    if isinstance(value, str) and value.strip().startswith("["):
        value = parse_flow_list(value.strip(), where)
    if not isinstance(value, (str, list, tuple)):
        raise MedtlError(f"{where}: cannot read {show(value)} as a list; give names separated by commas, e.g. a,b")
    items = value.split(",") if isinstance(value, str) else list(value)
    for item in items:
        if not isinstance(item, (str, int)) or isinstance(item, bool) or not abs_ok(item):
            raise MedtlError(f"{where}: item {show(item)} is not a name; give names (quoted if YAML would read "
                             "them otherwise, e.g. ['yes', 'no'])")
    return tuple(str(v).strip() for v in items if str(v).strip())


def _to_int(value: Any) -> int:
    """A whole number: 3, "3" or 3.0; never 2.7 truncated, a bool, infinity, or one of over 19 digits."""
    if isinstance(value, bool):
        raise ValueError(value)
    number = value if isinstance(value, int) else float(value)
    if isinstance(number, float):
        if not number.is_integer():
            raise ValueError(value)
        number = int(number)
    if not abs_ok(number):
        raise ValueError(value)
    return number


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if not isinstance(value, (str, int, float)):
        raise ValueError(value)
    text = str(value).strip().lower() if abs_ok(value) else ""
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(value)


THRESHOLD_NAMED = ("youden", "f1")  # chosen on validation by a criterion
THRESHOLD_TARGETS = ("sensitivity", "specificity")  # `sensitivity>=0.95`: the best other rate reaching it
THRESHOLD_HELP = "youden, f1, a number between 0 and 1 (e.g. 0.5), sensitivity>=0.95 or specificity>=0.90"


def threshold_spec(text: str) -> tuple[str, float | None]:
    """(kind, value) of an operating-point spec: ("youden", None), ("f1", None), ("fixed", 0.5),
    ("sensitivity", 0.95) or ("specificity", 0.9); ValueError (naming the valid forms) for anything else."""
    spec = str(text).strip().lower().replace(" ", "")
    if spec in THRESHOLD_NAMED:
        return spec, None
    name, sep, value = spec.partition(">=")
    if sep and name in THRESHOLD_TARGETS:
        target = _number_or_nan(value)
        if 0 < target <= 1:
            return name, target
        raise ValueError(f"{name} target {value!r} is not in (0, 1]")
    fixed = _number_or_nan(spec)
    if 0 < fixed < 1:
        return "fixed", fixed
    raise ValueError(f"not one of {THRESHOLD_HELP}")


def _number_or_nan(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return float("nan")
