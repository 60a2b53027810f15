"""Reading YAML that users give medtl: config files and `--set` values.

A hostile file is refused in one line naming the file, the place and the fix: aliases (a 400-byte "billion
laughs" file expands to gigabytes), tags (!!python/object builds objects; PyYAML's own constructors
fail with KeyError or AttributeError on some tagged values such as `!!bool x`), deep nesting, more than a
few thousand nodes, files over a megabyte, bytes that are not UTF-8, and values Python cannot hold (a date 2024-13-45,
an integer of 5000 digits).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from medtl.core.errors import MedtlError

MAX_BYTES = 1 << 20  # a run config is a few KB; a study a few more
MAX_NODES = 10_000  # a full run config has about 150 nodes
MAX_DEPTH = 32  # a run config is 3 levels deep

_SYNTAX_FIX = "fix the syntax there (e.g. a missing colon, a tab, an unclosed bracket or quote)"


class _Refused(yaml.MarkedYAMLError):
    """Valid YAML that medtl will not read (an alias, too many nodes, too deep, an impossible value)."""


class SafeLoader(yaml.SafeLoader):
    """yaml.SafeLoader without aliases or tags, with a node and depth cap, and the ValueErrors of its
    constructors (a date 2024-13-45) as YAML errors."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._nodes = 0
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        problem = self._refusal(event)
        if problem:
            raise _Refused(None, None, problem, event.start_mark)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def _refusal(self, event: yaml.Event) -> str:
        """Why the node that `event` starts is not read, or ''."""
        if isinstance(event, yaml.AliasEvent):
            return ("an alias (*name) repeats an anchored value, which can expand a small file into gigabytes; "
                    "write the value out instead")
        if getattr(event, "tag", None) is not None:  # !!python/object, !custom, even !!int: none is needed
            return (f"the tag {shorten(event.tag, 80)} is not read in a config (PyYAML's own constructors fail on "
                    "some tagged values); write plain values, quoted for text")
        self._nodes += 1
        if self._nodes > MAX_NODES:
            return f"the file holds more than {MAX_NODES} values, far more than a config has"
        if self._depth >= MAX_DEPTH:
            return f"the file nests values over {MAX_DEPTH} deep, far deeper than a config does"
        return ""

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError) as exc:  # e.g. date 2024-13-45, an int over Python's digit limit
            text = str(node.value) if isinstance(node, yaml.ScalarNode) else node.tag
            raise _Refused(None, None, f"cannot read {shorten(text)} ({shorten(str(exc), 80)}); quote it if it "
                           "is text", node.start_mark) from exc


class _TextLoader(SafeLoader):
    """SafeLoader reading every plain scalar as text: in `--set data.class_names=[yes, no]`, yes is a name."""

    yaml_implicit_resolvers: dict = {}


def shorten(text: str, limit: int = 40) -> str:
    """`text` as a quoted one-line excerpt of at most about `limit` characters."""
    shown = repr(text[:limit])
    return shown + ("…" if len(text) > limit else "")


def show(value: Any, limit: int = 60) -> str:
    """repr(value) for a one-line message: cut to `limit` characters, and safe for integers of any size."""
    try:
        text = repr(value)
    except ValueError:  # an int past Python's str() digit limit
        return f"a {value.bit_length()}-bit number"
    return text if len(text) <= limit else text[:limit] + "…"


def where_in(exc: yaml.YAMLError, text: str = "") -> str:
    """' at line L, column C: problem' (1-based, as editors count) from a multi-line yaml error."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = " ".join(str(getattr(exc, "problem", None) or getattr(exc, "reason", None) or exc).split())
    if mark is not None:
        return f" at line {mark.line + 1}, column {mark.column + 1}: {problem}"
    position = getattr(exc, "position", None)  # a ReaderError (a control character) counts characters
    if isinstance(position, int) and text:
        line = text.count("\n", 0, position)
        column = position - (text.rfind("\n", 0, position) + 1)
        return f" at line {line + 1}, column {column + 1}: {problem}"
    return f": {problem}"


def parse_yaml(text: str, where: str, loader: type[SafeLoader] = SafeLoader) -> Any:
    """Parse YAML text with `SafeLoader`; every error is one MedtlError line starting with `where`."""
    try:
        return yaml.load(text, Loader=loader)  # noqa: S506 (a yaml.SafeLoader, hardened)
    except _Refused as exc:
        raise MedtlError(f"{where}: refused{where_in(exc, text)}") from None
    except yaml.YAMLError as exc:
        raise MedtlError(f"{where}: not valid YAML{where_in(exc, text)}; {_SYNTAX_FIX}") from None


def read_yaml(path: str | Path, what: str = "config file", example: str = "") -> Any:
    """The parsed content of the YAML file `path` (None when empty); one MedtlError line for a missing file,
    a folder, a file too large, bytes that are not UTF-8, or YAML refused by `parse_yaml`.

    Args:
        path: The file.
        what: What the file is, for the messages ("config file", "study file").
        example: For a folder: the name of the file a folder of this kind holds (e.g. "config.yaml").
    """
    path = Path(path)
    if path.is_dir():
        inside = path / example if example else None
        hint = f"e.g. {inside}" if inside is not None and inside.is_file() else "not the folder"
        raise MedtlError(f"{what} {path} is a folder; pass the YAML file itself ({hint})")
    if path.exists() and not path.is_file():
        raise MedtlError(f"{what} {path} is not a regular file (a device or a pipe); pass a YAML file")
    if not path.is_file():
        raise MedtlError(f"{what} {path} not found; pass an existing YAML file or leave --config out")
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise MedtlError(f"{what} {path} is {size / 2**20:.1f} MiB, over the {MAX_BYTES // 2**20} MiB a YAML "
                         "config may be; pass the config file, not a data or model file")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise MedtlError(f"{what} {path} is not a UTF-8 text file (byte 0x{exc.object[exc.start]:02x} at offset "
                         f"{exc.start}); save it as UTF-8 YAML text") from None
    return parse_yaml(text, f"{what} {path}")


def parse_flow_list(text: str, where: str) -> list:
    """`[a, b]` (a YAML flow sequence of text, read by `SafeLoader`) -> ['a', 'b']; one MedtlError line
    otherwise."""
    value = parse_yaml(text, where, _TextLoader)
    if not isinstance(value, list):
        raise MedtlError(f"{where}: {shorten(text)} is not a list; write it as [a, b]")
    return value


def parse_set(items: list[str]) -> dict[str, str]:
    """Parse repeated `--set section.key=value` options; values stay text until their type is known (a list
    setting reads `[a, b]` as a YAML flow sequence)."""
    out = {}
    for item in items:
        if "=" not in item:
            raise MedtlError(f"--set {item!r}: expected section.key=value, e.g. --set train.lr=0.001")
        key, value = item.split("=", 1)
        out[key.strip()] = value.strip()
    return out
