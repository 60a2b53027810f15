"""Typed run configuration: frozen dataclasses, loaded from YAML, overridden by dotted keys.

The resolved config is written to every run folder and into every checkpoint, so a run can be
reproduced from its folder alone. The sections are in sections.py, the renamed keys of older configs
in renames.py, reading values in values.py and yaml_io.py; this package's front puts them together.
The command line's flag names are its own (medtl/cli/train.py); here a setting is a dotted key or a field name.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml

# the sections and the value readers are imported from here as before
from medtl.core.config.yaml_io import parse_set, read_yaml, show  # noqa: F401 (re-exported)
from medtl.core.config.renames import RENAMES, old_bare_names, renamed_key  # noqa: F401 (RENAMES re-exported)
from medtl.core.config.sections import (  # noqa: F401 (re-exported)
    AUTO_BUDGET, DEVICES, ENGINES, SECTIONS, STRATEGIES, TTA_CHOICES, CacheConfig, DataConfig, EvalConfig,
    ModelConfig, RunConfig, RuntimeConfig, Strategy, TrainConfig, budget_seconds, run_budget, section_fields)
from medtl.core.config.values import from_dict, to_dict  # noqa: F401 (re-exported)
from medtl.core.errors import MedtlError

TOP_LEVEL = ("out", "name")  # the settings outside the sections


def dotted_key(name: str) -> str:
    """A dotted key (`train.epochs`; an old one such as `eval.tta` renamed, with a deprecation line), a
    field name found in one section only (`batch_size`, `tta`), or `out`/`name` -> the dotted key; raises
    with the close matches otherwise."""
    if "." in name:
        return renamed_key(name)
    if name in TOP_LEVEL:
        return name
    fields = section_fields()
    owners = [s for s, names in fields.items() if name in names]
    if len(owners) == 1:
        return f"{owners[0]}.{name}"
    old = old_bare_names(fields)
    if name in old:
        return renamed_key(old[name])
    every = sorted(set().union(*fields.values()) | set(TOP_LEVEL))
    close = difflib.get_close_matches(name, every, n=3)
    raise MedtlError(f"unknown setting {name!r}" + (f" (did you mean {', '.join(close)}?)" if close else "")
                     + "; use a flag name such as epochs, or a dotted key such as train.lr")


def overrides_of(values: dict[str, Any]) -> dict[str, Any]:
    """{flag or key: value} -> {dotted key: value}, leaving out values that are None (not given)."""
    return {dotted_key(k): v for k, v in values.items() if v is not None}


def apply_overrides(cfg: RunConfig, overrides: dict[str, Any]) -> RunConfig:
    """Apply dotted overrides such as {'train.lr': '0.01', 'model.backbone': 'resnet18'}."""
    tree = to_dict(cfg)
    for dotted, value in overrides.items():
        if value is None:
            continue
        dotted = renamed_key(dotted)
        node = tree
        parts = dotted.split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                raise MedtlError(f"override {dotted!r}: {part!r} is not a section; sections: "
                                 f"{', '.join(SECTIONS)}")
            node = node[part]
        node[parts[-1]] = value
    return from_dict(RunConfig, tree)


def load_config(path: str | Path | None) -> RunConfig:
    """Read a YAML config file (any subset of sections); defaults fill the rest. Refuses in one line a folder,
    a file that is not UTF-8 YAML, aliases and tags (yaml_io.read_yaml), and values of the wrong type."""
    if path is None:
        return RunConfig()
    data = read_yaml(path, "config file", example="config.yaml")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise MedtlError(f"config file {path}: the top level is a {type(data).__name__} ({show(data, 40)}); a run "
                         "config is a mapping of sections data, model, train, eval, runtime, cache (e.g. a run "
                         "folder's config.yaml)")
    return run_config_from(data, str(path))


def run_config_from(data: Any, where: str) -> RunConfig:
    """A RunConfig from a parsed YAML mapping; every error names `where` (the file, or file:section)."""
    data = RunConfig.upgrade(data, where)  # older keys renamed, each named once with the file
    try:
        return from_dict(RunConfig, data, where="")  # keys as train.lr, after `where: `
    except MedtlError as exc:
        raise MedtlError(f"{where}: {exc}") from None


def dump_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def make_config(data: str | Path | None = None, *, config: str | Path | None = None, **settings: Any) -> RunConfig:
    """The resolved run config, checked completely (nothing is written).

    Args:
        data: The data (`data.path`), in any layout `train` takes.
        config: A YAML run config, read over the defaults.
        **settings: Settings over it: a flag name (`epochs=5`), a field found in one section (`batch_size=32`)
            or a dotted key (`**{"train.lr": 0.01}`).

    Returns:
        The `RunConfig`: defaults, then the file, then `data` and `settings`.

    Raises:
        MedtlError: An unknown key (with the close matches), or a value of the wrong type or out of range.
    """
    return apply_overrides(load_config(config), overrides_of({"data.path": str(data) if data else None,
                                                             **settings}))
