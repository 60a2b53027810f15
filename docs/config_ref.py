"""The settings reference, generated from the config's sections (`medtl/core/config/sections.py`): every key, its
type, default, range and the comment beside it in the code, so the page lists exactly the keys the code accepts;
then the renamed keys of older configs (`medtl/core/config/renames.py`)."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import typing

SIGNS = {"min": ">=", "gt": ">", "max": "<=", "lt": "<"}
# for the few fields whose line in config.py carries no comment (a comment there takes precedence)
FALLBACK = {"data.path": "the data: the DATA argument of `medtl train`",
            "data.hflip": "random horizontal flips in augmentation (turn off where left and right differ)",
            "model.backbone": "a name from `medtl backbones`", "model.strategy": "see [Choosing a strategy](../howto/strategy.md)",
            "model.head": "the new classifier head: one linear layer, or an MLP with dropout",
            "out": "parent folder of run folders (`--output-dir`)", "name": "run folder name (`--name`)"}


def _comments(cls: type) -> dict[str, str]:
    """{field: the comment at the end of its line, or the comment lines right above it}."""
    lines, _ = inspect.getsourcelines(cls)
    out = {}
    for node in ast.parse("".join(lines).strip()).body[0].body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            line = lines[node.end_lineno - 1]
            above, i = [], node.lineno - 2
            while i >= 0 and lines[i].strip().startswith("#"):  # a comment block right above the field
                above.insert(0, lines[i].strip().lstrip("#").strip())
                i -= 1
            out[node.target.id] = line.split("  # ", 1)[1].strip() if "  # " in line else " ".join(above)
    return out


def _type(hint: object) -> str:
    text = str(hint).replace("typing.", "").replace("NoneType", "None")
    if typing.get_origin(hint) is typing.Literal:
        return " \\| ".join(map(str, typing.get_args(hint)))
    return text.replace("<class '", "").replace("'>", "").replace("|", "\\|")


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        value = f.default_factory()  # type: ignore[misc]
    else:
        return ""
    return "`" + (repr(value) if isinstance(value, str) and not value else str(value)) + "`"


def render() -> str:
    """One table per section (data, model, train, eval, runtime, cache), the top-level keys, the renamed keys."""
    from medtl.core.config import RENAMES, SECTIONS, RunConfig

    parts = []
    for section, cls in (*SECTIONS.items(), ("", RunConfig)):
        hints, notes = typing.get_type_hints(cls), _comments(cls)
        fields = [f for f in dataclasses.fields(cls) if not dataclasses.is_dataclass(hints[f.name])]
        parts += [f"## {section or 'Top level'}\n", "| key | type | default | range | what |", "|---|---|---|---|---|"]
        for f in fields:
            key = f"{section}.{f.name}" if section else f.name
            limits = ", ".join(f"{SIGNS[k]} {v:g}" for k, v in f.metadata.items() if k in SIGNS)
            note = (notes.get(f.name) or FALLBACK.get(key, "")).replace("|", "\\|")
            parts.append(f"| `{key}` | {_type(hints[f.name])} | {_default(f)} | {limits} | {note} |")
        parts.append("")
    parts += ["## Renamed keys\n", "Older configs (a run folder's config.yaml, a checkpoint, a YAML file, `--set`, "
              "keyword arguments) may still use these keys; each is read as its new key, with one deprecation line.\n",
              "| old key | new key |", "|---|---|", *[f"| `{old}` | `{new}` |" for old, new in RENAMES.items()], ""]
    return "\n".join(parts)
